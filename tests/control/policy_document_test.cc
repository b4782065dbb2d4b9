// The versioned policy document (issue #5): validation names the field, versions persist across
// a restart, nothing is overwritten, concurrent editors cannot lose each other's change.
#include "control/policy_store.h"

#include <gtest/gtest.h>

#include <cstdlib>

namespace mailseal::control {
namespace {
using mailseal::v1::DomainRule;
using mailseal::v1::PolicyDocument;

TEST(Policy, ValidationNamesTheFieldAndNormalises) {
  PolicyDocument d;
  d.add_seemail_list()->set_domain("Agency-B.TEST");
  EXPECT_TRUE(ValidatePolicy(&d).ok());
  EXPECT_EQ(d.seemail_list(0).domain(), "agency-b.test");
  PolicyDocument twice = d;
  twice.add_seemail_list()->set_domain("agency-b.test");
  EXPECT_NE(ValidatePolicy(&twice).message().find("field 'seemail_list[1].domain'"), std::string::npos);
  PolicyDocument rule;
  rule.add_domain_rules()->set_domain("x.test");
  EXPECT_EQ(ValidatePolicy(&rule).message(), "field 'domain_rules[0].protection': required");
  PolicyDocument word;
  word.add_trigger_words("[SEEMAIL]");
  EXPECT_NE(ValidatePolicy(&word).message().find("field 'trigger_words[0]'"), std::string::npos);
  PolicyDocument admin;
  admin.mutable_notifications()->set_admin_address("no-at-sign");
  EXPECT_NE(ValidatePolicy(&admin).message().find("field 'notifications.admin_address'"), std::string::npos);
}

// Issue #6's fields: each refusal names the field; nothing half-valid is accepted.
TEST(Policy, Issue6FieldsAreValidated) {
  struct Case {
    void (*edit)(PolicyDocument*);
    const char* field;   // "" = valid
  } cases[] = {
      {[](PolicyDocument* d) { d->add_trusted_list()->set_domain("Boss@Agency-A.test"); }, ""},
      {[](PolicyDocument* d) { d->add_trusted_list()->set_domain("a b@agency-a.test"); }, "trusted_list[0].domain"},
      {[](PolicyDocument* d) { d->add_trusted_list()->set_domain("@agency-a.test"); }, "trusted_list[0].domain"},
      {[](PolicyDocument* d) {
         auto* r = d->add_sender_rules();
         r->set_domain("ceo@agency-a.test");
         r->set_protection(DomainRule::PROTECTION_NONE);
       },
       "sender_rules[0].protection"},
      {[](PolicyDocument* d) {
         auto* r = d->add_sender_rules();
         r->set_domain("hr.agency-a.test");
         r->set_protection(DomainRule::PROTECTION_SIGN);
       },
       ""},
      {[](PolicyDocument* d) {
         auto* t = d->add_trusted_servers();
         t->set_kind(mailseal::v1::TrustedServer::KIND_LISTSERV);
         t->set_address("192.0.2.0/24");
       },
       ""},
      {[](PolicyDocument* d) {
         auto* t = d->add_trusted_servers();
         t->set_kind(mailseal::v1::TrustedServer::KIND_SERVER);
         t->set_address("lists.agency-b.test");   // a name is not an address
       },
       "trusted_servers[0].address"},
      {[](PolicyDocument* d) { d->add_trusted_servers()->set_address("192.0.2.1"); }, "trusted_servers[0].kind"},
      {[](PolicyDocument* d) { d->set_classification_header("X-Classification"); }, ""},
      {[](PolicyDocument* d) { d->set_classification_header("X-Class: injected"); }, "classification_header"},
  };
  for (const Case& c : cases) {
    PolicyDocument d;
    c.edit(&d);
    Status st = ValidatePolicy(&d);
    if (*c.field == 0) {
      EXPECT_TRUE(st.ok()) << st.ToString();
    } else {
      EXPECT_NE(st.message().find(StrCat("field '", c.field, "'")), std::string::npos) << st.ToString();
    }
  }
  PolicyDocument lower;
  lower.add_trusted_list()->set_domain("Boss@Agency-A.test");
  ASSERT_TRUE(ValidatePolicy(&lower).ok());
  EXPECT_EQ(lower.trusted_list(0).domain(), "boss@agency-a.test") << "addresses normalised too";
}

TEST(Policy, VersionsPersistAndStaleEditsAreRefused) {
  char tmpl[] = "/tmp/mailseal-policy-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  {
    auto s = PolicyStore::Open(dir + "/p");
    ASSERT_TRUE(s.ok());
    EXPECT_EQ((*s)->Get(0).status().code(), StatusCode::kNotFound);
    PolicyDocument d;
    d.set_comment("one");
    auto* r = d.add_domain_rules();
    r->set_domain("agency-c.test");
    r->set_protection(DomainRule::PROTECTION_SEAL_REQUIRED);
    ASSERT_EQ(*(*s)->Set(d, 0, "CN=a"), 1u);
    d.set_comment("two");
    r->set_protection(DomainRule::PROTECTION_SEAL_WHEN_POSSIBLE);
    EXPECT_EQ((*s)->Set(d, 0, "CN=b").status().code(), StatusCode::kFailedPrecondition) << "made against version 0";
    ASSERT_EQ(*(*s)->Set(d, 1, "CN=b"), 2u);
  }
  auto s = PolicyStore::Open(dir + "/p");   // a restart
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->current(), 2u);
  EXPECT_EQ((*s)->Get(1)->comment(), "one") << "old versions are kept";
  EXPECT_EQ((*s)->Get(0)->version(), 2u);
  Result<std::vector<std::string>> diff = (*s)->Diff(1, 2);
  ASSERT_TRUE(diff.ok());
  std::string all;
  for (const auto& l : *diff) all += l + "\n";
  EXPECT_NE(all.find("PROTECTION_SEAL_WHEN_POSSIBLE"), std::string::npos) << all;
  auto h = (*s)->History();
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0].actor(), "CN=b");
  std::system(("rm -rf " + dir).c_str());
}

// Issue #20: in a cluster a change goes to the replicator (etcd's compare-and-swap) and comes
// back through Install, like any other node's; Install takes only the next version, validates
// what etcd holds, and is idempotent.
TEST(Policy, ClusterChangesGoThroughTheReplicatorAndInstall) {
  char tmpl[] = "/tmp/mailseal-policy-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  auto s = PolicyStore::Open(dir + "/p");
  ASSERT_TRUE(s.ok());
  PolicyStore* store = s->get();
  std::vector<uint64_t> published;
  store->SetOnChange([&](const PolicyDocument& d) { published.push_back(d.version()); });
  std::vector<mailseal::v1::PolicyVersionRecord> proposed;
  Status answer = OkStatus();
  store->SetReplicator([&](const mailseal::v1::PolicyVersionRecord& r, uint64_t expected) -> Status {
    proposed.push_back(r);
    if (!answer.ok()) return answer;
    EXPECT_EQ(r.info().version(), expected + 1);
    return store->Install(r);   // what the cluster does once etcd took it
  });
  PolicyDocument d;
  d.add_trigger_words("SECRET");
  ASSERT_EQ(*store->Set(d, 0, "CN=a"), 1u);
  ASSERT_EQ(proposed.size(), 1u);
  EXPECT_EQ(proposed[0].info().actor(), "CN=a");
  EXPECT_EQ(proposed[0].document().version(), 1u);
  EXPECT_EQ(store->current(), 1u);
  EXPECT_EQ(published, std::vector<uint64_t>{1});

  answer = FailedPreconditionError("the cluster's policy is at version 2");
  EXPECT_EQ(store->Set(d, 1, "CN=b").status().code(), StatusCode::kFailedPrecondition) << "the cluster's answer";
  EXPECT_EQ(store->current(), 1u) << "a refused change stores nothing";

  // Versions made on other nodes.
  mailseal::v1::PolicyVersionRecord two = proposed[0];
  two.mutable_info()->set_version(2);
  two.mutable_document()->set_version(2);
  mailseal::v1::PolicyVersionRecord three = two;
  three.mutable_info()->set_version(3);
  three.mutable_document()->set_version(3);
  EXPECT_EQ(store->Install(three).code(), StatusCode::kFailedPrecondition) << "a gap is refused";
  EXPECT_TRUE(store->Install(two).ok());
  EXPECT_TRUE(store->Install(two).ok()) << "installing a version held is a no-op";
  EXPECT_TRUE(store->Install(three).ok());
  EXPECT_EQ(published, (std::vector<uint64_t>{1, 2, 3}));
  mailseal::v1::PolicyVersionRecord bad = three;
  bad.mutable_info()->set_version(4);
  bad.mutable_document()->set_version(4);
  bad.mutable_document()->add_trigger_words("[bad]");
  EXPECT_EQ(store->Install(bad).code(), StatusCode::kInvalidArgument) << "etcd's copy is validated again";
  bad.mutable_document()->clear_trigger_words();
  bad.mutable_document()->set_version(7);
  EXPECT_EQ(store->Install(bad).code(), StatusCode::kInvalidArgument) << "record and document disagree";
  Result<mailseal::v1::PolicyVersionRecord> rec = store->Record(2);
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->info().version(), 2u);
  EXPECT_EQ(rec->document().trigger_words(0), "SECRET");
  std::system(("rm -rf " + dir).c_str());
}

}  // namespace
}  // namespace mailseal::control
