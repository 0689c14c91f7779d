/* The bare-send floor for bench/sfu_fanout.py: what the kernel charges to
 * send the same packets to N loopback UDP destinations with one plain
 * sendto() each, nothing else (no SRTP, no header rewrite, no event loop).
 *
 *   sendfloor N PPS SIZE SECONDS [per-destination|sendmmsg]  ->  one JSON line on stdout
 *
 * With "per-destination" every destination gets its own sending socket, as
 * every subscriber's ICE pair has its own socket in aiortc/aioice.  With
 * "sendmmsg" one socket sends all N copies of a packet in one sendmmsg()
 * call (what one shared UDP port, media.udp_port, would allow).
 *
 * A child process owns the N destination sockets and drains them, so the
 * packets are delivered (loopback delivery is charged to the sender, as it
 * is for every server measured) but the draining is not this process's CPU.
 * Bounded: at most 1000 destinations, 120 seconds, 100000 packets/s. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5 && !(argc == 6 && (strcmp(argv[5], "per-destination") == 0 || strcmp(argv[5], "sendmmsg") == 0))) {
        fprintf(stderr, "usage: sendfloor N PPS SIZE SECONDS [per-destination|sendmmsg]\n");
        return 2;
    }
    int n = atoi(argv[1]), pps = atoi(argv[2]), size = atoi(argv[3]);
    double seconds = atof(argv[4]);
    if (n < 1 || n > 1000 || pps < 1 || pps > 100000 || size < 12 || size > 1500 || seconds <= 0 || seconds > 120) {
        fprintf(stderr, "sendfloor: argument out of range\n");
        return 2;
    }
    int *rx = calloc(n, sizeof(int));
    struct sockaddr_in *dst = calloc(n, sizeof(struct sockaddr_in));
    for (int i = 0; i < n; i++) {
        rx[i] = socket(AF_INET, SOCK_DGRAM, 0);
        int buf = 1 << 20;
        setsockopt(rx[i], SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
        dst[i].sin_family = AF_INET;
        dst[i].sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        dst[i].sin_port = 0;
        if (bind(rx[i], (struct sockaddr *)&dst[i], sizeof dst[i]) < 0) { perror("bind"); return 1; }
        socklen_t len = sizeof dst[i];
        getsockname(rx[i], (struct sockaddr *)&dst[i], &len);
    }
    pid_t drain = fork();
    if (drain == 0) {
        struct pollfd *fds = calloc(n, sizeof(struct pollfd));
        for (int i = 0; i < n; i++) { fds[i].fd = rx[i]; fds[i].events = POLLIN; }
        char sink[2048];
        double end = now() + seconds + 5;
        while (now() < end) {
            if (poll(fds, n, 200) <= 0) continue;
            for (int i = 0; i < n; i++)
                if (fds[i].revents & POLLIN)
                    while (recv(rx[i], sink, sizeof sink, MSG_DONTWAIT) > 0) {}
        }
        _exit(0);
    }
    int per_destination = argc == 6 && strcmp(argv[5], "per-destination") == 0;
    int batch = argc == 6 && strcmp(argv[5], "sendmmsg") == 0;
    int *tx = calloc(n, sizeof(int));
    for (int i = 0; i < n; i++)
        tx[i] = (per_destination || i == 0) ? socket(AF_INET, SOCK_DGRAM, 0) : tx[0];
    char *packet = malloc(size);
    memset(packet, 0xAB, size);
    packet[0] = (char)0x80;
    struct iovec iov = {packet, (size_t)size};
    struct mmsghdr *msgs = calloc(n, sizeof(struct mmsghdr));
    for (int i = 0; i < n; i++) {
        msgs[i].msg_hdr.msg_name = &dst[i];
        msgs[i].msg_hdr.msg_namelen = sizeof dst[i];
        msgs[i].msg_hdr.msg_iov = &iov;
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    double start = now(), interval = 1.0 / pps;
    long sent = 0, errors = 0, k = 0;
    while (1) {
        double due = start + k * interval, t = now();
        if (due - start >= seconds) break;
        if (due > t) {
            struct timespec ts = {(time_t)(due - t), (long)((due - t - (time_t)(due - t)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        if (batch) {
            int done = 0;
            while (done < n) {
                int r = sendmmsg(tx[0], msgs + done, n - done, 0);
                if (r <= 0) { errors += n - done; break; }
                done += r;
            }
            sent += done;
            k++;
            continue;
        }
        for (int i = 0; i < n; i++) {
            if (sendto(tx[i], packet, size, 0, (struct sockaddr *)&dst[i], sizeof dst[i]) == size) sent++;
            else errors++;
        }
        k++;
    }
    double elapsed = now() - start;
    getrusage(RUSAGE_SELF, &after);
    double cpu = (after.ru_utime.tv_sec - before.ru_utime.tv_sec) + (after.ru_utime.tv_usec - before.ru_utime.tv_usec) / 1e6
               + (after.ru_stime.tv_sec - before.ru_stime.tv_sec) + (after.ru_stime.tv_usec - before.ru_stime.tv_usec) / 1e6;
    kill(drain, SIGTERM);
    waitpid(drain, NULL, 0);
    printf("{\"sent\": %ld, \"errors\": %ld, \"cpu\": %.6f, \"elapsed\": %.3f}\n", sent, errors, cpu, elapsed);
    return 0;
}
