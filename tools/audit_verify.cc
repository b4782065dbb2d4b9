// mailseal-audit — offline check of the audit trail (issue #5).
//
//   mailseal-audit verify LOG HEADS AUDIT_CERT [EXPORTED_HEADS]
//
// Reads every record (framing, checksums, sequence), recomputes the RFC 9162 Merkle tree and
// checks each signed tree head — from HEADS and, when given, from a copy of heads exported
// elsewhere (which is what detects a truncated or rewritten log whose own head file was
// rewritten too; EXPORTED_HEADS is what `mailsealctl audit export` writes, or a copied heads
// file) — against the audit certificate's public key. Records after the last signed head are
// reported as NOT COVERED, a log without any head fails, and a torn tail (a write that never
// completed) is reported as such, not as tampering. Exit 0: verified; 1: the first problem
// found, naming the record; 2: usage.
#include <openssl/pem.h>

#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <fstream>
#include <sstream>
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
    // What `mailsealctl audit export` writes (one head as JSON), or a heads file copied away.
    std::ifstream in(argv[5], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    mailseal::v1::TreeHead json_head;
    if (!in) {
      std::fprintf(stderr, "mailseal-audit: %s: cannot be read\n", argv[5]);
      return 2;
    } else if (ss.str().rfind("MSAHEAD1\n", 0) != 0 && google::protobuf::util::JsonStringToMessage(ss.str(), &json_head).ok()) {
      exported.push_back(json_head);
    } else {
      audit::Framed f = audit::ReadFramed(argv[5], "MSAHEAD1\n");
      if (!f.error.empty() || f.torn_tail) {
        std::fprintf(stderr, "mailseal-audit: exported heads: %s\n", f.error.empty() ? "ends in the middle of a head" : f.error.c_str());
        return 1;
      }
      for (const std::string& p : f.payloads) {
        exported.emplace_back();
        exported.back().ParseFromString(p);
      }
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
  if (r.covered < r.records)
    std::printf("NOT COVERED: records %llu..%llu are after the last signed tree head (not yet signed, or changed "
                "undetectably since)\n",
                static_cast<unsigned long long>(r.covered), static_cast<unsigned long long>(r.records - 1));
  if (r.torn_bytes)
    std::printf("torn tail: %llu bytes after the last whole record (a write that never completed: a crash or a full "
                "disk; no record lost, not tampering)\n",
                static_cast<unsigned long long>(r.torn_bytes));
  return 0;
}
