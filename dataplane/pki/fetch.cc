// fetch.cc — see fetch.h.
#include "dataplane/pki/fetch.h"

#include <curl/curl.h>
#include <openssl/x509v3.h>

#include <mutex>

#include "dataplane/base/strings.h"
#include "dataplane/pki/ldap.h"

namespace mailseal::pki {

namespace {

struct Sink {
  std::string* body;
  size_t max;
  bool too_big = false;
};

size_t Write(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<Sink*>(user);
  size_t len = size * n;
  if (s->body->size() + len > s->max) {
    s->too_big = true;
    return 0;   // aborts the transfer (CURLE_WRITE_ERROR)
  }
  s->body->append(data, len);
  return len;
}

bool Fetchable(std::string_view url) {
  for (std::string_view scheme : {"http://", "https://", "ldap://", "ldaps://"})
    if (url.size() > scheme.size() && base::AsciiLower(url.substr(0, scheme.size())) == scheme) return true;
  return false;
}

}  // namespace

namespace {
struct Strict {
  std::string ca_file;
  std::vector<std::string> connect_to;
};
Result<std::string> Transfer(const std::string& url, const FetchLimits& limits, const std::string* post,
                             const std::string& content_type, const Strict* strict = nullptr);
}  // namespace

Result<std::string> FetchHttpsStrict(const std::string& url, const FetchLimits& limits, const std::string& ca_file,
                                     const std::vector<std::string>& connect_to) {
  if (base::AsciiLower(url.substr(0, 8)) != "https://") return InvalidArgumentError(StrCat(url, ": only https"));
  Strict s{ca_file, connect_to};
  return Transfer(url, limits, nullptr, "", &s);
}

Result<std::string> Fetch(const std::string& url, const FetchLimits& limits) { return Transfer(url, limits, nullptr, ""); }

Result<std::string> Post(const std::string& url, const std::string& body, const std::string& content_type,
                         const FetchLimits& limits) {
  if (base::AsciiLower(url.substr(0, 4)) != "http") return InvalidArgumentError(StrCat(url, ": only http and https are posted to"));
  return Transfer(url, limits, &body, content_type);
}

namespace {
Result<std::string> Transfer(const std::string& url, const FetchLimits& limits, const std::string* post,
                             const std::string& content_type, const Strict* strict) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (!Fetchable(url)) return InvalidArgumentError(StrCat(url, ": only http, https, ldap and ldaps URLs are fetched"));
  if (base::AsciiLower(url.substr(0, 4)) == "ldap") {   // RFC 4516 URLs through libldap (pki/ldap.h)
    if (post) return InvalidArgumentError(StrCat(url, ": only http and https are posted to"));
    LdapLimits l;
    l.connect_timeout_ms = limits.connect_timeout_ms;
    l.total_timeout_ms = limits.total_timeout_ms;
    l.max_bytes = limits.max_bytes;
    return FetchLdapUrl(url, l);
  }
  CURL* c = curl_easy_init();
  if (!c) return InternalError("curl_easy_init failed");
  std::string body;
  Sink sink{&body, limits.max_bytes};
  char error[CURL_ERROR_SIZE] = "";
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, limits.connect_timeout_ms);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, limits.total_timeout_ms);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1024L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, 10L);
  curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, static_cast<curl_off_t>(limits.max_bytes));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, Write);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "mailseal-pki/1");
  curl_slist* connect_to = nullptr;
  if (strict) {
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
    if (!strict->ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, strict->ca_file.c_str());
    for (const std::string& e : strict->connect_to) connect_to = curl_slist_append(connect_to, e.c_str());
    if (connect_to) curl_easy_setopt(c, CURLOPT_CONNECT_TO, connect_to);
  }
  curl_slist* headers = nullptr;
  if (post) {
    curl_easy_setopt(c, CURLOPT_POST, 1L);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, post->data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(post->size()));
    headers = curl_slist_append(headers, StrCat("Content-Type: ", content_type).c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  }
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  curl_slist_free_all(connect_to);
  long status = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
  curl_easy_cleanup(c);
  if (sink.too_big || rc == CURLE_FILESIZE_EXCEEDED)
    return ResourceExhaustedError(StrCat(url, ": larger than ", limits.max_bytes, " bytes"));
  if (rc != CURLE_OK)
    return UnavailableError(StrCat(url, ": ", error[0] ? error : curl_easy_strerror(rc)));
  bool http = base::AsciiLower(url.substr(0, 4)) == "http";
  if (http && (status < 200 || status > 299)) return UnavailableError(StrCat(url, ": HTTP ", status));
  return body;
}
}  // namespace

std::vector<std::string> CrlUrls(X509* cert) {
  std::vector<std::string> out;
  int crit = 0;
  auto* dps = static_cast<CRL_DIST_POINTS*>(X509_get_ext_d2i(cert, NID_crl_distribution_points, &crit, nullptr));
  for (int i = 0; dps && i < sk_DIST_POINT_num(dps) && out.size() < 8; ++i) {
    DIST_POINT* dp = sk_DIST_POINT_value(dps, i);
    if (!dp->distpoint || dp->distpoint->type != 0) continue;   // fullName only
    GENERAL_NAMES* names = dp->distpoint->name.fullname;
    for (int j = 0; j < sk_GENERAL_NAME_num(names) && out.size() < 8; ++j) {
      const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, j);
      if (g->type != GEN_URI) continue;
      std::string url(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.uniformResourceIdentifier)),
                      static_cast<size_t>(ASN1_STRING_length(g->d.uniformResourceIdentifier)));
      if (Fetchable(url) && url.size() < 2048 && url.find_first_of(" \r\n\t") == std::string::npos) out.push_back(url);
    }
  }
  CRL_DIST_POINTS_free(dps);
  return out;
}

std::vector<std::string> OcspUrls(X509* cert) {
  std::vector<std::string> out;
  int crit = 0;
  auto* aia = static_cast<AUTHORITY_INFO_ACCESS*>(X509_get_ext_d2i(cert, NID_info_access, &crit, nullptr));
  for (int i = 0; aia && i < sk_ACCESS_DESCRIPTION_num(aia) && out.size() < 4; ++i) {
    ACCESS_DESCRIPTION* ad = sk_ACCESS_DESCRIPTION_value(aia, i);
    if (OBJ_obj2nid(ad->method) != NID_ad_OCSP || ad->location->type != GEN_URI) continue;
    std::string url(reinterpret_cast<const char*>(ASN1_STRING_get0_data(ad->location->d.uniformResourceIdentifier)),
                    static_cast<size_t>(ASN1_STRING_length(ad->location->d.uniformResourceIdentifier)));
    if (base::AsciiLower(url.substr(0, 4)) == "http" && Fetchable(url) && url.size() < 2048 &&
        url.find_first_of(" \r\n\t") == std::string::npos)
      out.push_back(url);
  }
  AUTHORITY_INFO_ACCESS_free(aia);
  return out;
}

}  // namespace mailseal::pki
