// openssl_error.h — OpenSSL's thread-local error queue as one line for logs and Status
// messages, and a memory BIO's contents as a string. Header-only: every user links libcrypto
// already, mailseal_base does not.
#pragma once

#include <openssl/bio.h>
#include <openssl/err.h>

#include <string>
#include <string_view>

namespace mailseal::base {

// OpenSslError: "what: first error; second error" (at most four), or "what: unknown error"
// when the queue is empty; the queue is cleared so a later failure does not report this one.
// An empty `what` gives the errors alone.
inline std::string OpenSslError(std::string_view what) {
  std::string out(what);
  int n = 0;
  for (unsigned long e; (e = ERR_get_error()) != 0;) {
    if (++n > 4) continue;   // drain the rest
    char buf[256];
    ERR_error_string_n(e, buf, sizeof buf);
    out += n == 1 ? (out.empty() ? "" : ": ") : "; ";
    out += buf;
  }
  if (n == 0) out += out.empty() ? "unknown error" : ": unknown error";
  return out;
}

// BioString: what a memory BIO holds (PEM output, a CMS encoding), copied out.
inline std::string BioString(BIO* b) {
  char* data = nullptr;
  long n = BIO_get_mem_data(b, &data);
  return n > 0 ? std::string(data, static_cast<size_t>(n)) : std::string();
}

}  // namespace mailseal::base
