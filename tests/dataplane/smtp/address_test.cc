#include "dataplane/smtp/address.h"

#include <gtest/gtest.h>

namespace mailseal::smtp {
namespace {

TEST(Address, PathsAndParameters) {
  PathArgs p;
  EXPECT_EQ(ParsePathArgs("<a@b.test> SIZE=10 BODY=7BIT", false, false, &p), PathError::kOk);
  EXPECT_EQ(p.address, "a@b.test");
  ASSERT_EQ(p.params.size(), 2u);
  EXPECT_EQ(p.params[0].keyword, "SIZE");
  EXPECT_EQ(p.params[0].value, "10");
  EXPECT_EQ(ParsePathArgs("<@relay.test,@r2.test:a@b.test>", false, false, &p), PathError::kOk);
  EXPECT_EQ(p.address, "a@b.test");
  EXPECT_EQ(ParsePathArgs("<\"john doe\"@b.test>", false, false, &p), PathError::kOk);
  EXPECT_EQ(ParsePathArgs("<a..b@b.test>", false, false, &p), PathError::kSyntax);
  EXPECT_EQ(ParsePathArgs("<a@-b.test>", false, false, &p), PathError::kSyntax);
  EXPECT_EQ(ParsePathArgs("<a@[127.0.0.1]>", false, false, &p), PathError::kOk);
  EXPECT_EQ(ParsePathArgs("a@b.test", false, false, &p), PathError::kSyntax);
  EXPECT_EQ(ParsePathArgs("<" + std::string(65, 'a') + "@b.test>", false, false, &p), PathError::kSyntax);
  EXPECT_EQ(ParsePathArgs("<a@" + std::string(300, 'b') + ">", false, false, &p), PathError::kTooLong);
}

TEST(Address, Xtext) {
  std::string out;
  EXPECT_TRUE(XtextDecode("a+2Bb+3D", &out));
  EXPECT_EQ(out, "a+b=");
  EXPECT_FALSE(XtextDecode("a+2", &out));
  EXPECT_FALSE(XtextDecode("a+zz", &out));
  EXPECT_EQ(XtextEncode("a+b= c"), "a+2Bb+3D+20c");
  EXPECT_EQ(DomainOf("X@Agency.TEST"), "agency.test");
}

}  // namespace
}  // namespace mailseal::smtp
