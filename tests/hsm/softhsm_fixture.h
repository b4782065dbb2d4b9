// softhsm_fixture.h — a fresh SoftHSM 2 token per test, in a temp dir the test owns.
// The PINs are test fixtures (clearly named, never used elsewhere).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include "hsm/module.h"

namespace mailseal::hsm::testing {

inline constexpr char kSoftHsmModule[] = "/usr/lib/softhsm/libsofthsm2.so";
inline constexpr char kTestUserPin[] = "test-user-pin-1234";
inline constexpr char kTestSoPin[] = "test-so-pin-5678";
inline constexpr char kTokenLabel[] = "gw-test";

class SoftHsmTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mailseal-hsm-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::string conf = dir_ + "/softhsm2.conf";
    std::system(("mkdir -p " + dir_ + "/tokens").c_str());
    std::ofstream(conf) << "directories.tokendir = " << dir_ << "/tokens\nobjectstore.backend = file\nlog.level = ERROR\n";
    setenv("SOFTHSM2_CONF", conf.c_str(), 1);
    Result<std::unique_ptr<Module>> m = Module::Load(kSoftHsmModule);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    module_ = std::move(m.value());
    slot_ = InitToken(kTokenLabel);
    Result<std::unique_ptr<Session>> s = Session::Open(module_.get(), slot_);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    session_ = std::move(s.value());
    ASSERT_TRUE(session_->Login(Secret(kTestUserPin)).ok());
  }
  void TearDown() override {
    session_.reset();
    module_.reset();
    std::system(("rm -rf " + dir_).c_str());
  }
  // InitToken initialises the next free slot's token through our own ceremony code.
  CK_SLOT_ID InitToken(const std::string& label) {
    Result<std::vector<SlotInfo>> slots = module_->Slots();
    EXPECT_TRUE(slots.ok());
    for (const SlotInfo& si : *slots) {
      if (si.token_present && !si.initialized) {
        Status st = module_->InitializeToken(si.slot, label, Secret(kTestSoPin), Secret(kTestUserPin));
        EXPECT_TRUE(st.ok()) << st.ToString();
        Result<CK_SLOT_ID> found = module_->FindToken(label);
        EXPECT_TRUE(found.ok()) << found.status().ToString();
        return found.ok() ? *found : 0;
      }
    }
    ADD_FAILURE() << "no free SoftHSM slot";
    return 0;
  }
  std::string Run(const std::string& cmd, int* rc = nullptr) {
    std::string out;
    FILE* p = popen((cmd + " 2>&1").c_str(), "r");
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    int status = pclose(p);
    if (rc) *rc = WEXITSTATUS(status);
    return out;
  }
  std::string dir_;
  std::unique_ptr<Module> module_;
  CK_SLOT_ID slot_ = 0;
  std::unique_ptr<Session> session_;
};

}  // namespace mailseal::hsm::testing
