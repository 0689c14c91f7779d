// Where to go after signing in: only ever a page of this site. A string check is not
// enough: browsers read "/\evil.example" and "/\t/evil.example" as another host, so the
// candidate is resolved the way location.assign would and its origin compared.
"use strict";

function sameOriginPath(raw) {
  if (typeof raw !== "string" || !raw.startsWith("/")) return null;
  let url;
  try {
    url = new URL(raw, location.origin);
  } catch (e) {
    return null;
  }
  if (url.origin !== location.origin) return null;
  return url.pathname + url.search + url.hash;
}
