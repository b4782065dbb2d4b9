// ldap.cc — see ldap.h.
#include "dataplane/pki/ldap.h"

#include <lber.h>
#include <ldap.h>
#include <sys/time.h>

#include <chrono>
#include <memory>

#include "dataplane/base/strings.h"

namespace mailseal::pki {
namespace {

using Clock = std::chrono::steady_clock;

timeval Tv(long ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

// Every PDU the server sends is bounded before libldap allocates it (a hostile server
// announcing a 2 GiB entry is cut off at the length header).
struct ConnBound {
  ldap_conncb cb{};
  ber_len_t max = 0;
};
int OnConnect(LDAP*, Sockbuf* sb, LDAPURLDesc*, sockaddr*, ldap_conncb* ctx) {
  auto* b = static_cast<ConnBound*>(ctx->lc_arg);
  ber_sockbuf_ctrl(sb, LBER_SB_OPT_SET_MAX_INCOMING, &b->max);
  return 0;
}
void OnClose(LDAP*, Sockbuf*, ldap_conncb*) {}

struct Unbind {
  void operator()(LDAP* ld) const { ldap_unbind_ext_s(ld, nullptr, nullptr); }
};
struct MsgFree {
  void operator()(LDAPMessage* m) const { ldap_msgfree(m); }
};

// SameAttribute: "userCertificate;binary" answers "userCertificate;binary" or "userCertificate"
// (servers differ in whether they echo the transfer option).
bool SameAttribute(std::string_view got, std::string_view want) {
  auto base = [](std::string_view a) { return a.substr(0, a.find(';')); };
  return base::AsciiLower(base(got)) == base::AsciiLower(base(want));
}

}  // namespace

std::string FilterFor(const std::string& tmpl, const std::string& value) {
  std::string escaped;
  for (unsigned char c : value) {
    if (c == '*' || c == '(' || c == ')' || c == '\\' || c == 0 || c >= 0x80) {
      static const char kHex[] = "0123456789abcdef";
      escaped += '\\';
      escaped += kHex[c >> 4];
      escaped += kHex[c & 15];
    } else {
      escaped += static_cast<char>(c);
    }
  }
  std::string out;
  for (size_t i = 0; i < tmpl.size(); ++i) {
    if (tmpl[i] == '%' && i + 1 < tmpl.size() && tmpl[i + 1] == 's') {
      out += escaped;
      ++i;
    } else {
      out += tmpl[i];
    }
  }
  return out;
}

namespace {
Result<std::vector<std::string>> SearchImpl(const LdapSearch& q, const LdapLimits& limits, size_t* entries_out);
}  // namespace

Result<std::vector<std::string>> Search(const LdapSearch& q, const LdapLimits& limits) {
  return SearchImpl(q, limits, nullptr);
}

Result<size_t> CountEntries(const LdapSearch& q, const LdapLimits& limits) {
  size_t n = 0;
  Result<std::vector<std::string>> v = SearchImpl(q, limits, &n);
  if (!v.ok()) return v.status();
  return n;
}

namespace {
Result<std::vector<std::string>> SearchImpl(const LdapSearch& q, const LdapLimits& limits, size_t* entries_out) {
  const Clock::time_point deadline = Clock::now() + std::chrono::milliseconds(limits.total_timeout_ms);
  auto left_ms = [&] {
    return std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  };
  LDAP* raw = nullptr;
  int rc = ldap_initialize(&raw, q.server.c_str());
  if (rc != LDAP_SUCCESS || !raw) return InvalidArgumentError(StrCat(q.server, ": ", ldap_err2string(rc)));
  std::unique_ptr<LDAP, Unbind> ld(raw);
  int v3 = LDAP_VERSION3;
  ldap_set_option(ld.get(), LDAP_OPT_PROTOCOL_VERSION, &v3);
  ldap_set_option(ld.get(), LDAP_OPT_REFERRALS, LDAP_OPT_OFF);
  timeval connect = Tv(limits.connect_timeout_ms);
  ldap_set_option(ld.get(), LDAP_OPT_NETWORK_TIMEOUT, &connect);
  timeval whole = Tv(limits.total_timeout_ms);
  ldap_set_option(ld.get(), LDAP_OPT_TIMEOUT, &whole);
  ConnBound bound;
  bound.max = static_cast<ber_len_t>(limits.max_bytes);
  bound.cb.lc_add = OnConnect;
  bound.cb.lc_del = OnClose;
  bound.cb.lc_arg = &bound;
  ldap_set_option(ld.get(), LDAP_OPT_CONNECT_CB, &bound.cb);

  const bool tls = q.starttls || q.server.starts_with("ldaps://");
  if (tls) {
    int hard = LDAP_OPT_X_TLS_HARD;
    ldap_set_option(ld.get(), LDAP_OPT_X_TLS_REQUIRE_CERT, &hard);
    if (!q.ca_file.empty()) ldap_set_option(ld.get(), LDAP_OPT_X_TLS_CACERTFILE, q.ca_file.c_str());
    int is_server = 0;
    ldap_set_option(ld.get(), LDAP_OPT_X_TLS_NEWCTX, &is_server);
  }
  if (q.starttls && !q.server.starts_with("ldaps://")) {
    rc = ldap_start_tls_s(ld.get(), nullptr, nullptr);
    if (rc != LDAP_SUCCESS) return UnavailableError(StrCat(q.server, ": StartTLS: ", ldap_err2string(rc)));
  }
  std::string password = q.bind_password;
  berval cred{password.size(), password.data()};
  rc = ldap_sasl_bind_s(ld.get(), q.bind_dn.empty() ? nullptr : q.bind_dn.c_str(), LDAP_SASL_SIMPLE, &cred, nullptr,
                        nullptr, nullptr);
  std::fill(password.begin(), password.end(), '\0');
  if (rc != LDAP_SUCCESS)
    return UnavailableError(StrCat(q.server, q.bind_dn.empty() ? ": anonymous bind: " : ": bind: ", ldap_err2string(rc)));

  std::string attr = q.attribute;
  char* attrs[] = {attr.data(), nullptr};
  int scope = q.base_only ? LDAP_SCOPE_BASE : q.one_level ? LDAP_SCOPE_ONELEVEL : LDAP_SCOPE_SUBTREE;
  timeval time_limit = Tv(std::max<long>(1000, left_ms()));
  int msgid = 0;
  rc = ldap_search_ext(ld.get(), q.base.c_str(), scope, q.filter.empty() ? nullptr : q.filter.c_str(), attrs, 0,
                       nullptr, nullptr, &time_limit, static_cast<int>(limits.max_entries), &msgid);
  if (rc != LDAP_SUCCESS) return UnavailableError(StrCat(q.server, ": search: ", ldap_err2string(rc)));

  std::vector<std::string> values;
  size_t bytes = 0, entries = 0;
  auto give_up = [&](Status st) {
    ldap_abandon_ext(ld.get(), msgid, nullptr, nullptr);
    return st;
  };
  for (;;) {
    long ms = left_ms();
    if (ms <= 0)
      return give_up(DeadlineExceededError(StrCat(q.server, ": no complete answer within ", limits.total_timeout_ms, " ms")));
    timeval wait = Tv(ms);
    LDAPMessage* got = nullptr;
    rc = ldap_result(ld.get(), msgid, LDAP_MSG_ONE, &wait, &got);
    std::unique_ptr<LDAPMessage, MsgFree> res(got);
    if (rc == 0)
      return give_up(DeadlineExceededError(StrCat(q.server, ": no complete answer within ", limits.total_timeout_ms, " ms")));
    if (rc < 0) {
      int err = LDAP_OTHER;
      ldap_get_option(ld.get(), LDAP_OPT_RESULT_CODE, &err);
      return UnavailableError(StrCat(q.server, ": ", ldap_err2string(err)));
    }
    switch (ldap_msgtype(res.get())) {
      case LDAP_RES_SEARCH_ENTRY: {
        if (entries_out) ++*entries_out;
        if (++entries > limits.max_entries)
          return give_up(ResourceExhaustedError(StrCat(q.server, ": more than ", limits.max_entries, " entries")));
        BerElement* ber = nullptr;
        for (char* a = ldap_first_attribute(ld.get(), res.get(), &ber); a; a = ldap_next_attribute(ld.get(), res.get(), ber)) {
          bool wanted = SameAttribute(a, q.attribute);
          berval** vals = wanted ? ldap_get_values_len(ld.get(), res.get(), a) : nullptr;
          ldap_memfree(a);
          for (size_t i = 0; vals && vals[i]; ++i) {
            bytes += vals[i]->bv_len;
            if (values.size() >= limits.max_values || bytes > limits.max_bytes) {
              ldap_value_free_len(vals);
              if (ber) ber_free(ber, 0);
              return give_up(ResourceExhaustedError(StrCat(q.server, ": more than ", limits.max_values, " values or ",
                                                           limits.max_bytes, " bytes")));
            }
            values.emplace_back(vals[i]->bv_val, vals[i]->bv_len);
          }
          if (vals) ldap_value_free_len(vals);
        }
        if (ber) ber_free(ber, 0);
        break;
      }
      case LDAP_RES_SEARCH_REFERENCE:
        break;   // referrals are not chased (another server: not the one configured)
      case LDAP_RES_SEARCH_RESULT: {
        int err = LDAP_OTHER;
        char* text = nullptr;
        LDAPMessage* last = res.release();
        if (ldap_parse_result(ld.get(), last, &err, nullptr, &text, nullptr, nullptr, /*freeit=*/1) != LDAP_SUCCESS)
          return UnavailableError(StrCat(q.server, ": unreadable search result"));
        std::string detail = text ? std::string(text) : "";
        if (text) ldap_memfree(text);
        // The base not existing is an answer: nothing there.
        if (err == LDAP_SUCCESS || err == LDAP_NO_SUCH_OBJECT) return values;
        if (err == LDAP_SIZELIMIT_EXCEEDED)
          return ResourceExhaustedError(StrCat(q.server, ": more than ", limits.max_entries, " entries"));
        return UnavailableError(StrCat(q.server, ": search: ", ldap_err2string(err), detail.empty() ? "" : ": ", detail));
      }
      default:
        return give_up(UnavailableError(StrCat(q.server, ": unexpected LDAP message type ", ldap_msgtype(res.get()))));
    }
  }
}
}  // namespace

Result<std::string> FetchLdapUrl(const std::string& url, const LdapLimits& limits) {
  LDAPURLDesc* lud = nullptr;
  if (ldap_url_parse(url.c_str(), &lud) != LDAP_URL_SUCCESS || !lud) return InvalidArgumentError(StrCat(url, ": not an LDAP URL"));
  std::unique_ptr<LDAPURLDesc, void (*)(LDAPURLDesc*)> guard(lud, ldap_free_urldesc);
  // No host: libldap would use ldap.conf's default server — not the one the certificate named.
  if (!lud->lud_host || !*lud->lud_host) return InvalidArgumentError(StrCat(url, ": names no server"));
  if (lud->lud_crit_exts) return InvalidArgumentError(StrCat(url, ": critical extensions are not supported"));
  if (!lud->lud_attrs || !lud->lud_attrs[0]) return InvalidArgumentError(StrCat(url, ": names no attribute"));
  LdapSearch q;
  q.server = StrCat(lud->lud_scheme, "://", std::string_view(lud->lud_host).find(':') != std::string_view::npos
                                                ? StrCat("[", lud->lud_host, "]") : std::string(lud->lud_host),
                    lud->lud_port ? StrCat(":", lud->lud_port) : "");
  q.base = lud->lud_dn ? lud->lud_dn : "";
  q.attribute = lud->lud_attrs[0];
  q.filter = lud->lud_filter ? lud->lud_filter : "(objectClass=*)";
  q.base_only = lud->lud_scope == LDAP_SCOPE_BASE || lud->lud_scope == LDAP_SCOPE_DEFAULT;
  q.one_level = lud->lud_scope == LDAP_SCOPE_ONELEVEL;
  Result<std::vector<std::string>> v = Search(q, limits);
  if (!v.ok()) return v.status();
  if (v->empty()) return NotFoundError(StrCat(url, ": no ", q.attribute, " value at ", q.base));
  return std::move(v->front());
}

}  // namespace mailseal::pki
