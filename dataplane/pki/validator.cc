// validator.cc — see validator.h.
#include "dataplane/pki/validator.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs7.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <ctime>
#include <functional>

#include "dataplane/base/file.h"
#include "dataplane/base/openssl_error.h"
#include "dataplane/base/strings.h"
#include "dataplane/pki/crl_cache.h"
#include "dataplane/pki/fetch.h"

namespace mailseal::pki {

namespace {

constexpr size_t kMaxFileBytes = 32u << 20;   // a trust list or CRL file read at once

std::string Time(const ASN1_TIME* t) {
  if (!t) return "?";
  BIO* b = BIO_new(BIO_s_mem());
  ASN1_TIME_print(b, t);
  std::string s = base::BioString(b);
  BIO_free(b);
  return s;
}

std::string Name(const X509_NAME* n) {
  if (!n) return "?";
  char buf[512];
  X509_NAME_oneline(n, buf, sizeof buf);
  return buf;
}

// Problem: one error the verifier reported, and what it means for SEE-2.8.
struct Problem {
  bool where_named = false;   // revocation asked only of certificates that name a CRL source
  Verdict verdict = Verdict::kValid;
  int error = X509_V_OK;
  int depth = 0;
  X509* cert = nullptr;   // borrowed from the context's chain while it lives
  std::string reason;
};

Verdict Classify(int err) {
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED: return Verdict::kExpired;
    case X509_V_ERR_CERT_NOT_YET_VALID: return Verdict::kNotYetValid;
    case X509_V_ERR_CERT_REVOKED: return Verdict::kRevoked;
    case X509_V_ERR_UNABLE_TO_GET_CRL:
    case X509_V_ERR_CRL_HAS_EXPIRED:
    case X509_V_ERR_CRL_NOT_YET_VALID:
    case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
    case X509_V_ERR_UNABLE_TO_DECRYPT_CRL_SIGNATURE:
    case X509_V_ERR_ERROR_IN_CRL_LAST_UPDATE_FIELD:
    case X509_V_ERR_ERROR_IN_CRL_NEXT_UPDATE_FIELD:
    case X509_V_ERR_DIFFERENT_CRL_SCOPE:
    case X509_V_ERR_CRL_PATH_VALIDATION_ERROR:
    case X509_V_ERR_KEYUSAGE_NO_CRL_SIGN:
    case X509_V_ERR_UNHANDLED_CRITICAL_CRL_EXTENSION:
      return Verdict::kStatusUnknown;
    default: return Verdict::kUntrusted;
  }
}

std::string Explain(int err, X509* cert) {
  X509_NAME* issuer = cert ? X509_get_issuer_name(cert) : nullptr;
  switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED: return StrCat("expired on ", Time(cert ? X509_get0_notAfter(cert) : nullptr));
    case X509_V_ERR_CERT_NOT_YET_VALID: return StrCat("not valid before ", Time(cert ? X509_get0_notBefore(cert) : nullptr));
    case X509_V_ERR_CERT_REVOKED: return StrCat("revoked (on the CRL of ", Name(issuer), ")");
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
      return StrCat("no path to a trust anchor: its issuer ", Name(issuer),
                    " is neither on the trust list nor among the intermediates given");
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
      return "self-signed and not on the trust list";
    case X509_V_ERR_UNABLE_TO_GET_CRL:
      return StrCat("revocation status unknown: no CRL of ", Name(issuer), " is held");
    case X509_V_ERR_CRL_HAS_EXPIRED: return StrCat("revocation status unknown: the CRL of ", Name(issuer), " has expired");
    case X509_V_ERR_CRL_NOT_YET_VALID: return StrCat("revocation status unknown: the CRL of ", Name(issuer), " is not valid yet");
    case X509_V_ERR_CRL_SIGNATURE_FAILURE:
      return StrCat("revocation status unknown: the CRL of ", Name(issuer), " has a bad signature");
    case X509_V_ERR_UNABLE_TO_GET_CRL_ISSUER:
      return StrCat("revocation status unknown: the issuer of the CRL for this certificate cannot be found");
    case X509_V_ERR_CERT_SIGNATURE_FAILURE: return "its signature does not verify with its issuer's key";
    case X509_V_ERR_INVALID_PURPOSE:
      return "not fit for the purpose: its key usage or extended key usage does not allow it";
    case X509_V_ERR_INVALID_CA: return "used as a CA but is not one (basicConstraints cA or keyCertSign missing)";
    case X509_V_ERR_PATH_LENGTH_EXCEEDED: return "the path is longer than a CA's pathLenConstraint allows";
    case X509_V_ERR_CERT_CHAIN_TOO_LONG: return "the path is longer than allowed";
    case X509_V_ERR_PERMITTED_VIOLATION:
    case X509_V_ERR_EXCLUDED_VIOLATION: return "a name in it breaks its issuers' name constraints";
    case X509_V_ERR_NO_EXPLICIT_POLICY: return "no acceptable certificate policy on the path (explicit policy required)";
    case X509_V_ERR_EMAIL_MISMATCH: return "it does not carry the expected e-mail address";
    case X509_V_ERR_HOSTNAME_MISMATCH: return "it does not carry the expected host name";
    case X509_V_ERR_IP_ADDRESS_MISMATCH: return "it does not carry the expected IP address";
    default: break;
  }
  return X509_verify_cert_error_string(err);
}

int Collect(int ok, X509_STORE_CTX* ctx) {
  if (ok) return 1;
  auto* worst = static_cast<Problem*>(X509_STORE_CTX_get_app_data(ctx));
  // OpenSSL validates a CRL issuer's own path in a context of its own (RFC 5280 §6.3.3 (f)),
  // which carries this callback but not our record: there a problem must fail that path, so
  // that the CRL is not used — never be collected and waved through.
  if (!worst) return 0;
  int err = X509_STORE_CTX_get_error(ctx);
  X509* current = X509_STORE_CTX_get_current_cert(ctx);
  bool by_ocsp = false;
  // No current CRL: an OCSP answer may stand in for it (RFC 6960) when the certificate names a
  // responder — a cached one; the refresher asks meanwhile (crl_cache.h).
  if (current && (err == X509_V_ERR_UNABLE_TO_GET_CRL || err == X509_V_ERR_CRL_HAS_EXPIRED)) {
    CrlCache* cache = CrlCache::Of(X509_STORE_CTX_get0_store(ctx));
    STACK_OF(X509)* chain = X509_STORE_CTX_get0_chain(ctx);
    int depth = X509_STORE_CTX_get_error_depth(ctx);
    X509* issuer = chain && depth + 1 < sk_X509_num(chain) ? sk_X509_value(chain, depth + 1) : nullptr;
    if (!issuer && chain && depth + 1 == sk_X509_num(chain) && X509_check_issued(current, current) == X509_V_OK) issuer = current;
    CrlCache::OcspAnswer answer = cache ? cache->Ocsp(current, issuer) : CrlCache::OcspAnswer::kNone;
    if (answer == CrlCache::OcspAnswer::kGood) return 1;
    if (answer == CrlCache::OcspAnswer::kRevoked) {
      err = X509_V_ERR_CERT_REVOKED;
      X509_STORE_CTX_set_error(ctx, err);
      by_ocsp = true;
    }
    // Revocation "where named": a certificate that names no CRL distribution point and no OCSP
    // responder (and has no CRL in the store) is not asked for its status.
    if (err == X509_V_ERR_UNABLE_TO_GET_CRL && worst->where_named && CrlUrls(current).empty() && OcspUrls(current).empty())
      return 1;
  }
  Verdict v = Classify(err);
  if (worst->verdict == Verdict::kValid || static_cast<int>(v) > static_cast<int>(worst->verdict)) {
    worst->verdict = v;
    worst->error = err;
    worst->depth = X509_STORE_CTX_get_error_depth(ctx);
    worst->cert = X509_STORE_CTX_get_current_cert(ctx);
    worst->reason = by_ocsp ? "revoked (its issuer's OCSP responder says so)" : Explain(err, worst->cert);
  }
  return 1;   // go on: every problem is seen, the worst decides
}

// ---- RFC 5280 profile checks beyond OpenSSL's verifier ---------------------------------
// OpenSSL 3.0 validates paths but takes much of RFC 5280's certificate profile on trust (its
// X509_STRICT mode also refuses what PKITS requires to pass, e.g. a non-critical
// basicConstraints in an intermediate, 4.6.4). These are the MUSTs whose breach makes a
// certificate ambiguous to two readers — checked on every certificate of the built path.

// PreferredName: RFC 1034 §3.5 / RFC 1123 §2.1 host name syntax; `wildcard`: "*." may lead.
bool PreferredName(std::string_view d, bool wildcard) {
  if (wildcard && d.substr(0, 2) == "*.") d.remove_prefix(2);
  if (!base::ValidDomainName(d)) return false;
  size_t start = 0;
  while (start <= d.size()) {
    size_t dot = d.find('.', start);
    std::string_view label = d.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') return false;
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return true;
}

std::string_view Ia5(const ASN1_IA5STRING* s) {
  return s ? std::string_view(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), static_cast<size_t>(ASN1_STRING_length(s)))
           : std::string_view();
}

// Mailbox: local@domain with exactly one '@' and a host-name domain (RFC 5280 §4.2.1.6).
bool Mailbox(std::string_view m) {
  size_t at = m.find('@');
  return at != std::string_view::npos && at > 0 && m.find('@', at + 1) == std::string_view::npos &&
         PreferredName(m.substr(at + 1), false);
}

bool Critical(X509* c, int nid, bool* present) {
  int i = X509_get_ext_by_NID(c, nid, -1);
  *present = i >= 0;
  return i >= 0 && X509_EXTENSION_get_critical(X509_get_ext(c, i)) == 1;
}

bool SelfIssued(X509* c) { return X509_NAME_cmp(X509_get_subject_name(c), X509_get_issuer_name(c)) == 0; }

// ProfileProblem: what breaks the profile in `c` ("" when nothing); `leaf`: the end entity;
// `anchor`: a trust anchor, whose issuer is not on the path (RFC 5280 §6.1.1 (d): it is an
// input, so its authorityKeyIdentifier is not asked for).
std::string ProfileProblem(X509* c, bool leaf, bool anchor) {
  const ASN1_INTEGER* serial = X509_get0_serialNumber(c);
  if (ASN1_STRING_type(serial) == V_ASN1_NEG_INTEGER) return "its serial number is negative (RFC 5280 §4.1.2.2)";
  if (ASN1_STRING_length(serial) > 20) return "its serial number is longer than 20 octets (RFC 5280 §4.1.2.2)";
  bool zero = true;
  for (int i = 0; i < ASN1_STRING_length(serial); ++i) zero = zero && ASN1_STRING_get0_data(serial)[i] == 0;
  if (zero) return "its serial number is zero (RFC 5280 §4.1.2.2)";
  bool ca = X509_check_ca(c) > 0 && !leaf;
  bool present = false;
  if (!anchor && !SelfIssued(c) && !X509_get0_authority_key_id(c))
    return "it has no authorityKeyIdentifier (RFC 5280 §4.2.1.1)";
  if (ca && !X509_get0_subject_key_id(c)) return "a CA certificate without subjectKeyIdentifier (RFC 5280 §4.2.1.2)";
  bool empty_subject = X509_NAME_entry_count(X509_get_subject_name(c)) == 0;
  if (ca && empty_subject) return "a CA certificate with an empty subject (RFC 5280 §4.1.2.6)";
  if (empty_subject && !Critical(c, NID_subject_alt_name, &present))
    return "an empty subject without a critical subjectAltName (RFC 5280 §4.2.1.6)";
  if ((X509_get_extension_flags(c) & EXFLAG_KUSAGE) && (X509_get_key_usage(c) & KU_KEY_CERT_SIGN) &&
      !(X509_get_extension_flags(c) & EXFLAG_CA))
    return "keyCertSign without basicConstraints cA (RFC 5280 §4.2.1.9)";
  if (bool nc = Critical(c, NID_name_constraints, &present); present) {
    if (!nc) return "a non-critical nameConstraints extension (RFC 5280 §4.2.1.10)";
    if (leaf || !(X509_get_extension_flags(c) & EXFLAG_CA)) return "nameConstraints in a certificate that is not a CA's (RFC 5280 §4.2.1.10)";
  }
  // policyConstraints "MUST be critical" (§4.2.1.11) is not enforced: PKITS's valid policy
  // paths (4.8, 4.10, 4.12) carry it non-critical.
  int crit = 0;
  if (auto* eku = static_cast<EXTENDED_KEY_USAGE*>(X509_get_ext_d2i(c, NID_ext_key_usage, &crit, nullptr))) {
    bool empty = sk_ASN1_OBJECT_num(eku) == 0;
    sk_ASN1_OBJECT_pop_free(eku, ASN1_OBJECT_free);
    if (empty) return "an empty extendedKeyUsage extension (RFC 5280 §4.2.1.12)";
  }
  std::string bad;
  if (auto* san = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(c, NID_subject_alt_name, &crit, nullptr))) {
    for (int i = 0; i < sk_GENERAL_NAME_num(san) && bad.empty(); ++i) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(san, i);
      if (g->type == GEN_DNS && !PreferredName(Ia5(g->d.dNSName), true))
        bad = StrCat("its subjectAltName dNSName '", Ia5(g->d.dNSName), "' is not a host name (RFC 5280 §4.2.1.6)");
      if (g->type == GEN_EMAIL && !Mailbox(Ia5(g->d.rfc822Name)))
        bad = StrCat("its subjectAltName rfc822Name '", Ia5(g->d.rfc822Name), "' is not a mailbox (RFC 5280 §4.2.1.6)");
    }
    GENERAL_NAMES_free(san);
  }
  if (!bad.empty()) return bad;
  if (auto* nc = static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(c, NID_name_constraints, &crit, nullptr))) {
    for (STACK_OF(GENERAL_SUBTREE)* trees : {nc->permittedSubtrees, nc->excludedSubtrees})
      for (int i = 0; i < sk_GENERAL_SUBTREE_num(trees) && bad.empty(); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_SUBTREE_value(trees, i)->base;
        if (g->type == GEN_DNS && !Ia5(g->d.dNSName).empty() && !PreferredName(Ia5(g->d.dNSName), false))
          bad = StrCat("its nameConstraints dNSName '", Ia5(g->d.dNSName), "' is not a host name (RFC 5280 §4.2.1.10)");
      }
    NAME_CONSTRAINTS_free(nc);
  }
  return bad;
}

// WildcardExcluded: a wildcard dNSName of the leaf ("*.example.com") stands for names that
// an issuer's excluded subtree forbids ("bar.example.com"): RFC 5280 checks the literal name,
// a TLS client matches the wildcard — two readers, so it is refused (CVE-2025-61727).
std::string WildcardExcluded(const std::vector<X509Ptr>& chain) {
  if (chain.empty()) return "";
  int crit = 0;
  auto* san = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(chain[0].get(), NID_subject_alt_name, &crit, nullptr));
  if (!san) return "";
  std::string bad;
  for (size_t k = 1; k < chain.size() && bad.empty(); ++k) {
    auto* nc = static_cast<NAME_CONSTRAINTS*>(X509_get_ext_d2i(chain[k].get(), NID_name_constraints, &crit, nullptr));
    if (!nc) continue;
    for (int j = 0; j < sk_GENERAL_SUBTREE_num(nc->excludedSubtrees) && bad.empty(); ++j) {
      const GENERAL_NAME* e = sk_GENERAL_SUBTREE_value(nc->excludedSubtrees, j)->base;
      if (e->type != GEN_DNS) continue;
      std::string excluded = base::AsciiLower(Ia5(e->d.dNSName));
      for (int i = 0; i < sk_GENERAL_NAME_num(san) && bad.empty(); ++i) {
        const GENERAL_NAME* g = sk_GENERAL_NAME_value(san, i);
        std::string name = g->type == GEN_DNS ? base::AsciiLower(Ia5(g->d.dNSName)) : "";
        if (name.substr(0, 2) != "*.") continue;
        std::string parent = name.substr(2);
        bool under = excluded.size() > parent.size() && excluded.compare(excluded.size() - parent.size(), parent.size(), parent) == 0 &&
                     excluded[excluded.size() - parent.size() - 1] == '.';
        if (under && excluded.find('.') == excluded.size() - parent.size() - 1)
          bad = StrCat("its subjectAltName '", name, "' covers '", excluded, "', which ", Describe(chain[k].get()),
                       " excludes (name constraints)");
      }
    }
    NAME_CONSTRAINTS_free(nc);
  }
  GENERAL_NAMES_free(san);
  return bad;
}

// UsableCrl: a CRL without cRLNumber breaks RFC 5280 §5.2.3 (MUST): which of two CRLs is newer
// cannot be told, so it is not used (the certificate's status is then unknown, not "good").
bool UsableCrl(X509_CRL* crl) {
  int crit = 0;
  ASN1_INTEGER* n = static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl, NID_crl_number, &crit, nullptr));
  ASN1_INTEGER_free(n);
  return n != nullptr;
}

// ForEachPem calls `f` with each PEM block's label and DER until it returns false.
void ForEachPem(std::string_view data, const std::function<bool(std::string_view, const unsigned char*, long)>& f) {
  BIO* b = BIO_new_mem_buf(data.data(), static_cast<int>(data.size()));
  char* name = nullptr;
  char* header = nullptr;
  unsigned char* der = nullptr;
  long len = 0;
  bool more = true;
  while (more && PEM_read_bio(b, &name, &header, &der, &len) == 1) {
    more = f(name, der, len);
    OPENSSL_free(name);
    OPENSSL_free(header);
    OPENSSL_free(der);
    name = header = nullptr;
    der = nullptr;
  }
  BIO_free(b);
}

// TakeBundle: the certificates of a PKCS#7 bundle (.p7b/.p7c, "certs-only" SignedData), at
// most one more than `max` (so that the caller sees the excess); frees the bundle.
void TakeBundle(PKCS7* p7, size_t max, std::vector<X509Ptr>* out) {
  STACK_OF(X509)* certs = p7 && PKCS7_type_is_signed(p7) && p7->d.sign ? p7->d.sign->cert : nullptr;
  for (int i = 0; certs && i < sk_X509_num(certs) && out->size() <= max; ++i) {
    X509* c = sk_X509_value(certs, i);
    X509_up_ref(c);
    out->push_back(X509Ptr(c, X509_free));
  }
  PKCS7_free(p7);
}

int OpenSslPurpose(Purpose p) {
  switch (p) {
    case Purpose::kSmimeSign: return X509_PURPOSE_SMIME_SIGN;
    case Purpose::kSmimeEncrypt: return X509_PURPOSE_SMIME_ENCRYPT;
    case Purpose::kTlsServer: return X509_PURPOSE_SSL_SERVER;
    case Purpose::kTlsClient: return X509_PURPOSE_SSL_CLIENT;
    case Purpose::kAny: break;
  }
  return 0;
}

}  // namespace

const char* VerdictName(Verdict v) {
  switch (v) {
    case Verdict::kValid: return "valid";
    case Verdict::kStatusUnknown: return "status unknown";
    case Verdict::kExpired: return "expired";
    case Verdict::kNotYetValid: return "not yet valid";
    case Verdict::kUntrusted: return "untrusted";
    case Verdict::kRevoked: return "revoked";
  }
  return "?";
}

X509Ptr Own(X509* owned) { return X509Ptr(owned, X509_free); }
CrlPtr Own(X509_CRL* owned) { return CrlPtr(owned, X509_CRL_free); }

std::string SubjectOf(X509* cert) { return Name(cert ? X509_get_subject_name(cert) : nullptr); }

std::string SerialHex(X509* cert) {
  BIGNUM* bn = cert ? ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr) : nullptr;
  char* hex = bn ? BN_bn2hex(bn) : nullptr;
  std::string s = hex ? hex : "?";
  OPENSSL_free(hex);
  BN_free(bn);
  return s;
}

int64_t UnixTime(const ASN1_TIME* t) {
  std::tm tm{};
  if (!t || ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<int64_t>(timegm(&tm));
}

std::string Describe(X509* cert) {
  if (!cert) return "(no certificate)";
  return StrCat(SubjectOf(cert), " (serial 0x", SerialHex(cert), ")");
}

TrustList::TrustList() : store_(X509_STORE_new()) {}
TrustList::~TrustList() { X509_STORE_free(store_); }

Status TrustList::AddAnchor(X509* cert) {
  if (!cert) return InvalidArgumentError("no certificate");
  // Only a conforming CA certificate may be an anchor (RFC 5280 §4.2.1.9, §4.2.1.2): the
  // operator's list is checked when it is loaded, not when mail depends on it.
  bool present = false;
  bool critical = Critical(cert, NID_basic_constraints, &present);
  if (!present || !(X509_get_extension_flags(cert) & EXFLAG_CA))
    return InvalidArgumentError(StrCat("trust anchor ", Describe(cert), " is not a CA certificate (basicConstraints cA missing)"));
  if (!critical)
    return InvalidArgumentError(StrCat("trust anchor ", Describe(cert), " has a non-critical basicConstraints (RFC 5280 §4.2.1.9)"));
  if (!X509_get0_subject_key_id(cert))
    return InvalidArgumentError(StrCat("trust anchor ", Describe(cert), " has no subjectKeyIdentifier (RFC 5280 §4.2.1.2)"));
  if (std::string why = ProfileProblem(cert, false, true); !why.empty())
    return InvalidArgumentError(StrCat("trust anchor ", Describe(cert), ": ", why));
  if (X509_STORE_add_cert(store_, cert) != 1) {
    unsigned long e = ERR_peek_last_error();
    ERR_clear_error();
    if (ERR_GET_REASON(e) != X509_R_CERT_ALREADY_IN_HASH_TABLE)
      return InvalidArgumentError(StrCat("trust anchor ", Describe(cert), " refused by OpenSSL"));
    return OkStatus();
  }
  X509_up_ref(cert);
  anchors_.push_back(Own(cert));
  return OkStatus();
}

Status TrustList::AddCrl(X509_CRL* crl) {
  if (!crl) return InvalidArgumentError("no CRL");
  if (!UsableCrl(crl))
    return InvalidArgumentError(StrCat("the CRL of ", Name(X509_CRL_get_issuer(crl)), " has no cRLNumber (RFC 5280 §5.2.3)"));
  if (X509_STORE_add_crl(store_, crl) != 1) {
    ERR_clear_error();
    return OkStatus();   // the same CRL twice
  }
  X509_CRL_up_ref(crl);
  crls_.push_back(Own(crl));
  return OkStatus();
}

Status TrustList::LoadFile(const std::string& path, bool anchors, bool crls) {
  Result<std::string> data = base::ReadFile(path, kMaxFileBytes);
  if (!data.ok()) return data.status();
  size_t added = 0;
  if (anchors) {
    Result<std::vector<X509Ptr>> certs = ParseCertificates(*data, 4096);
    if (certs.ok())
      for (const X509Ptr& c : *certs) {
        if (Status st = AddAnchor(c.get()); !st.ok()) return Status(st.code(), StrCat(path, ": ", st.message()));
        ++added;
      }
  }
  if (crls) {
    Result<std::vector<CrlPtr>> list = ParseCrls(*data);
    if (list.ok())
      for (const CrlPtr& c : *list) {
        if (Status st = AddCrl(c.get()); !st.ok()) return Status(st.code(), StrCat(path, ": ", st.message()));
        ++added;
      }
  }
  if (added == 0)
    return InvalidArgumentError(StrCat(path, ": no ", anchors && crls ? "certificate or CRL" : anchors ? "certificate" : "CRL",
                                       " could be read (DER or PEM expected)"));
  return OkStatus();
}

Result<std::vector<X509Ptr>> ParseCertificates(std::string_view data, size_t max) {
  std::vector<X509Ptr> out;
  if (data.size() > INT32_MAX) return InvalidArgumentError("certificate data too large");
  if (data.find("-----BEGIN") != std::string_view::npos) {
    // Each PEM block in turn: certificates, and PKCS#7 bundles (.p7b/.p7c) whose certificates count.
    ForEachPem(data, [&](std::string_view n, const unsigned char* p, long len) {
      if (n == "CERTIFICATE" || n == "X509 CERTIFICATE" || n == "TRUSTED CERTIFICATE") {
        X509* c = n == "TRUSTED CERTIFICATE" ? d2i_X509_AUX(nullptr, &p, len) : d2i_X509(nullptr, &p, len);
        if (c) out.push_back(Own(c));
      } else if (n == "PKCS7") {
        TakeBundle(d2i_PKCS7(nullptr, &p, len), max, &out);
      }
      return out.size() <= max;
    });
  } else {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
    long len = static_cast<long>(data.size());
    if (X509* c = d2i_X509(nullptr, &p, len)) {
      out.push_back(Own(c));
    } else {
      p = reinterpret_cast<const unsigned char*>(data.data());
      TakeBundle(d2i_PKCS7(nullptr, &p, len), max, &out);
    }
  }
  ERR_clear_error();
  if (out.size() > max) return InvalidArgumentError(StrCat("more than ", max, " certificates"));
  if (out.empty()) return InvalidArgumentError("no certificate could be read (DER, PEM or PKCS#7 expected)");
  return out;
}

Result<std::vector<CrlPtr>> ParseCrls(std::string_view data, size_t max) {
  std::vector<CrlPtr> out;
  if (data.size() > INT32_MAX) return InvalidArgumentError("CRL data too large");
  if (data.find("-----BEGIN") != std::string_view::npos) {
    ForEachPem(data, [&](std::string_view n, const unsigned char* p, long len) {
      if (n == "X509 CRL")
        if (X509_CRL* c = d2i_X509_CRL(nullptr, &p, len)) out.push_back(Own(c));
      return out.size() <= max;
    });
  } else {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(data.data());
    if (X509_CRL* c = d2i_X509_CRL(nullptr, &p, static_cast<long>(data.size()))) out.push_back(Own(c));
  }
  ERR_clear_error();
  if (out.size() > max) return InvalidArgumentError(StrCat("more than ", max, " CRLs"));
  if (out.empty()) return InvalidArgumentError("no CRL could be read (DER or PEM expected)");
  return out;
}

Outcome Validate(const TrustList& trust, const Request& r) { return Validate(trust.store(), r); }

Outcome Validate(X509_STORE* store, const Request& r) {
  Outcome out;
  if (!r.leaf) {
    out.reason = "no certificate to validate";
    return out;
  }
  if (r.untrusted.size() > static_cast<size_t>(kMaxUntrusted)) {
    out.reason = StrCat(r.untrusted.size(), " intermediate certificates offered; at most ", kMaxUntrusted, " are considered");
    return out;
  }
  if (r.crls.size() > static_cast<size_t>(kMaxCrls)) {
    out.reason = StrCat(r.crls.size(), " CRLs offered; at most ", kMaxCrls, " are considered");
    out.verdict = Verdict::kStatusUnknown;
    return out;
  }
  X509_STORE_CTX* ctx = X509_STORE_CTX_new();
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  for (X509* c : r.untrusted)
    if (c) sk_X509_push(untrusted, c);
  STACK_OF(X509_CRL)* crls = sk_X509_CRL_new_null();
  for (X509_CRL* c : r.crls)
    if (c && UsableCrl(c)) sk_X509_CRL_push(crls, c);
  Problem worst;
  if (!ctx || X509_STORE_CTX_init(ctx, store, r.leaf, untrusted) != 1) {
    out.reason = "the verifier could not be set up (out of memory)";
  } else {
    if (sk_X509_CRL_num(crls) > 0) X509_STORE_CTX_set0_crls(ctx, crls);
    X509_VERIFY_PARAM* p = X509_STORE_CTX_get0_param(ctx);
    // A trust anchor is a name and a key (RFC 5280 §6.1.1 (d)): an operator may trust an
    // intermediate CA without its root, so the path may end at any certificate of the list.
    unsigned long flags = X509_V_FLAG_PARTIAL_CHAIN;
    bool attached = false;
    Revocation mode = RevocationOf(store, &attached);
    if (r.revocation || attached) flags |= X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL | X509_V_FLAG_EXTENDED_CRL_SUPPORT;
    worst.where_named = !r.revocation && attached && mode == Revocation::kWhereNamed &&
                        !(X509_VERIFY_PARAM_get_flags(X509_STORE_get0_param(store)) & X509_V_FLAG_CRL_CHECK);
    if (r.delta_crls) flags |= X509_V_FLAG_USE_DELTAS;
    if (r.policy.check) {
      flags |= X509_V_FLAG_POLICY_CHECK;
      if (r.policy.explicit_policy) flags |= X509_V_FLAG_EXPLICIT_POLICY;
      if (r.policy.inhibit_mapping) flags |= X509_V_FLAG_INHIBIT_MAP;
      if (r.policy.inhibit_any) flags |= X509_V_FLAG_INHIBIT_ANY;
      STACK_OF(ASN1_OBJECT)* oids = sk_ASN1_OBJECT_new_null();
      for (const std::string& oid : r.policy.initial_policy_set)
        if (ASN1_OBJECT* o = OBJ_txt2obj(oid.c_str(), 1)) sk_ASN1_OBJECT_push(oids, o);
      if (sk_ASN1_OBJECT_num(oids) > 0) X509_VERIFY_PARAM_set1_policies(p, oids);
      sk_ASN1_OBJECT_pop_free(oids, ASN1_OBJECT_free);
    }
    X509_VERIFY_PARAM_set_flags(p, flags);
    X509_VERIFY_PARAM_set_depth(p, std::clamp(r.max_depth, 0, kMaxDepth));
    if (r.at_unix != 0) X509_VERIFY_PARAM_set_time(p, static_cast<time_t>(r.at_unix));
    if (int purpose = OpenSslPurpose(r.purpose)) X509_STORE_CTX_set_purpose(ctx, purpose);
    if (!r.email.empty()) X509_VERIFY_PARAM_set1_email(p, r.email.data(), r.email.size());
    if (!r.host.empty()) X509_VERIFY_PARAM_set1_host(p, r.host.data(), r.host.size());
    if (!r.ip.empty()) X509_VERIFY_PARAM_set1_ip_asc(p, r.ip.c_str());
    X509_STORE_CTX_set_app_data(ctx, &worst);
    X509_STORE_CTX_set_verify_cb(ctx, Collect);
    int rc = X509_verify_cert(ctx);
    if (rc <= 0 && worst.verdict == Verdict::kValid) {
      int err = X509_STORE_CTX_get_error(ctx);
      worst.verdict = err == X509_V_OK ? Verdict::kUntrusted : Classify(err);
      worst.error = err;
      worst.reason = err == X509_V_OK ? "the verifier failed without saying why" : Explain(err, nullptr);
      worst.cert = X509_STORE_CTX_get_current_cert(ctx);
      worst.depth = X509_STORE_CTX_get_error_depth(ctx);
    }
    std::vector<X509Ptr> chain;
    if (STACK_OF(X509)* built = X509_STORE_CTX_get1_chain(ctx)) {
      for (int i = 0; i < sk_X509_num(built); ++i) {
        X509* c = sk_X509_value(built, i);
        X509_up_ref(c);
        chain.push_back(Own(c));
      }
      sk_X509_pop_free(built, X509_free);
    }
    if (static_cast<int>(worst.verdict) < static_cast<int>(Verdict::kUntrusted)) {
      for (size_t i = 0; i < chain.size(); ++i) {
        bool anchor = i + 1 == chain.size() && worst.verdict != Verdict::kUntrusted;
        std::string why = ProfileProblem(chain[i].get(), i == 0, anchor);
        if (i == 0 && why.empty()) why = WildcardExcluded(chain);
        if (why.empty()) continue;
        worst.verdict = Verdict::kUntrusted;
        worst.error = X509_V_ERR_APPLICATION_VERIFICATION;
        worst.cert = chain[i].get();
        worst.depth = static_cast<int>(i);
        worst.reason = why;
        break;
      }
    }
    out.verdict = worst.verdict;
    out.error = worst.error;
    if (worst.verdict != Verdict::kValid)
      out.reason = StrCat(worst.cert ? Describe(worst.cert) : Describe(r.leaf), " (depth ", worst.depth, "): ", worst.reason);
    out.chain = std::move(chain);
    if (X509_POLICY_TREE* tree = X509_STORE_CTX_get0_policy_tree(ctx)) {
      STACK_OF(X509_POLICY_NODE)* nodes = X509_policy_tree_get0_user_policies(tree);
      for (int i = 0; i < sk_X509_POLICY_NODE_num(nodes); ++i) {
        const ASN1_OBJECT* o = X509_policy_node_get0_policy(sk_X509_POLICY_NODE_value(nodes, i));
        char buf[128];
        OBJ_obj2txt(buf, sizeof buf, o, 1);
        out.user_constrained_policies.emplace_back(buf);
      }
    }
  }
  X509_STORE_CTX_free(ctx);
  sk_X509_free(untrusted);
  sk_X509_CRL_free(crls);
  ERR_clear_error();
  return out;
}

}  // namespace mailseal::pki
