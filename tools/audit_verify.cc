// mailseal-audit — offline check of the audit trail (issue #5).
//
//   mailseal-audit verify LOG HEADS AUDIT_CERT [EXPORTED_HEADS]
//
// Reads every record (framing, checksums, sequence), recomputes the RFC 9162 Merkle tree and
// checks each signed tree head — from HEADS and, when given, from a copy of heads exported
// elsewhere (which is what detects a truncated or rewritten log whose own head file was
// rewritten too) — against the audit certificate's public key. Exit 0: verified; 1: the first
// problem found, naming the record; 2: usage.
#include <openssl/pem.h>

#include <cstdio>
#include <string>

#include "control/audit/log.h"

using namespace mailseal;

int main(int argc, char** argv) {
  if (argc < 5 || argc > 6 || std::string(argv[1]) != "verify") {
    std::fprintf(stderr, "usage: mailseal-audit verify LOG HEADS AUDIT_CERT [EXPORTED_HEADS]\n");
    return 2;
  }
  BIO* b = BIO_new_file(argv[4], "r");
  X509* cert = b ? PEM_read_bio_X509(b, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(b);
  if (!cert) {
    std::fprintf(stderr, "mailseal-audit: %s: no PEM certificate\n", argv[4]);
    return 2;
  }
  std::vector<mailseal::v1::TreeHead> exported;
  if (argc == 6) {
    audit::Framed f = audit::ReadFramed(argv[5], "MSAHEAD1\n");
    if (!f.error.empty()) {
      std::fprintf(stderr, "mailseal-audit: exported heads: %s\n", f.error.c_str());
      return 1;
    }
    for (const std::string& p : f.payloads) {
      exported.emplace_back();
      exported.back().ParseFromString(p);
    }
  }
  audit::VerifyReport r = audit::VerifyLog(argv[2], argv[3], X509_get0_pubkey(cert), exported);
  X509_free(cert);
  if (!r.error.empty()) {
    std::printf("FAILED: %s\n", r.error.c_str());
    if (r.first_bad_record >= 0) std::printf("first bad record: %lld\n", static_cast<long long>(r.first_bad_record));
    return 1;
  }
  std::printf("verified: %llu records, %llu signed tree heads\n", static_cast<unsigned long long>(r.records),
              static_cast<unsigned long long>(r.heads_checked));
  return 0;
}
