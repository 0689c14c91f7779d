/* LD_PRELOAD shim for the Janus baseline in bench/sfu_fanout.py: getifaddrs()
 * reports one interface, 127.0.0.1, so Janus (libnice) gathers ICE candidates
 * on loopback only.  Janus 1.1.2 skips interfaces flagged IFF_LOOPBACK, so the
 * flag is left off; nothing else of the process is changed. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

struct lo_only {
    struct ifaddrs ifa;
    struct sockaddr_in addr, mask;
    char name[8];
};

int getifaddrs(struct ifaddrs **out) {
    struct lo_only *lo = calloc(1, sizeof *lo);
    if (!lo) return -1;
    strcpy(lo->name, "lo");
    lo->addr.sin_family = AF_INET;
    lo->addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    lo->mask.sin_family = AF_INET;
    lo->mask.sin_addr.s_addr = htonl(0xFF000000);
    lo->ifa.ifa_name = lo->name;
    lo->ifa.ifa_flags = IFF_UP | IFF_RUNNING;
    lo->ifa.ifa_addr = (struct sockaddr *)&lo->addr;
    lo->ifa.ifa_netmask = (struct sockaddr *)&lo->mask;
    *out = &lo->ifa;
    return 0;
}

void freeifaddrs(struct ifaddrs *ifa) {
    free(ifa);   /* the struct lo_only starts with its ifaddrs */
}
