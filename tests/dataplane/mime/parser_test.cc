// Streaming MIME structure parser (issue #4: MIME part): structure, exact byte ranges,
// delimiter edge cases, limits; and that any chunking gives the same result.
#include "dataplane/mime/parser.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace mailseal::mime {
namespace {

std::vector<Part> Parse(const std::string& msg, size_t chunk = 0, Status* status = nullptr) {
  Parser p;
  Status st;
  if (chunk == 0) {
    st = p.Feed(msg);
  } else {
    for (size_t i = 0; i < msg.size() && st.ok(); i += chunk) st = p.Feed(std::string_view(msg).substr(i, chunk));
  }
  if (st.ok()) st = p.Finish();
  if (status) *status = st;
  return p.parts();
}

std::string Body(const std::string& msg, const Part& p) { return msg.substr(p.body_begin, p.end - p.body_begin); }
std::string Whole(const std::string& msg, const Part& p) { return msg.substr(p.begin, p.end - p.begin); }

const std::string kNested =
    "From: alice@agency-a.test\r\n"
    "Subject: =?utf-8?q?caf=C3=A9?= report\r\n"
    "  continued\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: multipart/mixed; boundary=\"outer\"\r\n"
    "\r\n"
    "This is the preamble. --outer is not a delimiter here.\r\n"
    "--outer\r\n"
    "Content-Type: multipart/alternative; boundary=inner\r\n"
    "\r\n"
    "--inner\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "hello\r\n"
    "--inner\r\n"
    "Content-Type: text/html\r\n"
    "\r\n"
    "<p>hello</p>\r\n"
    "--inner--\r\n"
    "--outer  \r\n"
    "Content-Type: application/octet-stream; name=\"a;b.bin\"\r\n"
    "Content-Transfer-Encoding: BASE64\r\n"
    "\r\n"
    "AAECAw==\r\n"
    "--outer--\r\n"
    "epilogue\r\n";

TEST(MimeParser, NestedStructureWithExactByteRanges) {
  Status st;
  std::vector<Part> parts = Parse(kNested, 0, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  ASSERT_EQ(parts.size(), 5u);
  const Part& root = parts[0];
  EXPECT_EQ(root.type, "multipart");
  EXPECT_EQ(root.subtype, "mixed");
  EXPECT_EQ(root.params.at("boundary"), "outer");
  EXPECT_TRUE(root.closed);
  EXPECT_EQ(root.children, (std::vector<int>{1, 4}));
  EXPECT_EQ(root.Find("subject")->Value(), "=?utf-8?q?caf=C3=A9?= report  continued") << "unfolded, words kept";
  EXPECT_EQ(root.Find("Subject")->raw, "Subject: =?utf-8?q?caf=C3=A9?= report\r\n  continued\r\n") << "raw byte-exact";
  EXPECT_EQ(parts[1].subtype, "alternative");
  EXPECT_EQ(parts[1].children, (std::vector<int>{2, 3}));
  EXPECT_EQ(Body(kNested, parts[2]), "hello") << "the CRLF before a delimiter belongs to the delimiter";
  EXPECT_EQ(parts[2].params.at("charset"), "utf-8");
  EXPECT_EQ(Body(kNested, parts[3]), "<p>hello</p>");
  EXPECT_EQ(Whole(kNested, parts[3]), "Content-Type: text/html\r\n\r\n<p>hello</p>");
  EXPECT_EQ(parts[4].params.at("name"), "a;b.bin") << "quoted parameter with ';'";
  EXPECT_EQ(parts[4].transfer_encoding, "base64");
  EXPECT_EQ(Body(kNested, parts[4]), "AAECAw==");
  EXPECT_EQ(root.end, kNested.size());
  EXPECT_EQ(parts[1].end, kNested.find("\r\n--outer  \r\n"));
}

TEST(MimeParser, AnyChunkingGivesTheSameParts) {
  std::vector<Part> whole = Parse(kNested);
  std::mt19937 rng(7);
  for (size_t chunk : {1, 2, 3, 5, 7, 13, 64}) {
    std::vector<Part> parts = Parse(kNested, chunk);
    ASSERT_EQ(parts.size(), whole.size()) << chunk;
    for (size_t i = 0; i < parts.size(); ++i) {
      EXPECT_EQ(parts[i].begin, whole[i].begin) << chunk;
      EXPECT_EQ(parts[i].body_begin, whole[i].body_begin) << chunk;
      EXPECT_EQ(parts[i].end, whole[i].end) << chunk;
      EXPECT_EQ(parts[i].headers.size(), whole[i].headers.size()) << chunk;
    }
  }
}

TEST(MimeParser, DelimiterRules) {
  // Not delimiters: a longer boundary, text after it, mid-line. A missing close delimiter of
  // the inner multipart is ended by the outer delimiter.
  std::string m =
      "Content-Type: multipart/mixed; boundary=b\r\n\r\n"
      "--b\r\n"
      "Content-Type: multipart/related; boundary=c\r\n\r\n"
      "--c\r\n\r\n"
      "line --b\r\n"
      "--bb\r\n"
      "--b and text\r\n"
      "--b\r\n\r\nsecond\r\n"
      "--b--";
  std::vector<Part> parts = Parse(m);
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_FALSE(parts[1].closed) << "inner multipart never closed";
  EXPECT_EQ(Body(m, parts[2]), "line --b\r\n--bb\r\n--b and text");
  EXPECT_EQ(Body(m, parts[3]), "second");
  EXPECT_TRUE(parts[0].closed) << "close delimiter without a final line end";
}

TEST(MimeParser, BareLfLineEndsAndNoMimeAtAll) {
  std::string m = "Content-Type: multipart/mixed; boundary=x\n\n--x\n\nfirst\n--x--\n";
  std::vector<Part> parts = Parse(m);
  ASSERT_EQ(parts.size(), 2u);
  EXPECT_EQ(Body(m, parts[1]), "first");
  std::string plain = "Subject: hi\r\n\r\njust text\r\n";
  parts = Parse(plain);
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_EQ(parts[0].type, "text");
  EXPECT_EQ(Body(plain, parts[0]), "just text\r\n");
}

TEST(MimeParser, EnclosedMessageAndSignedPartsAreRecognised) {
  std::string m =
      "Content-Type: multipart/mixed; boundary=o\r\n\r\n"
      "--o\r\n"
      "Content-Type: message/rfc822\r\n\r\n"
      "From: inner@agency-b.test\r\n"
      "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=s\r\n\r\n"
      "--s\r\n\r\nsigned text \r\n\r\n--s\r\n"
      "Content-Type: application/pkcs7-signature\r\n\r\nMIAGCSqGSIb3DQEHAqCAMIACAQEx\r\n--s--\r\n"
      "--o--\r\n";
  std::vector<Part> parts = Parse(m);
  ASSERT_EQ(parts.size(), 5u);
  EXPECT_EQ(parts[1].subtype, "rfc822");
  EXPECT_EQ(parts[2].parent, 1) << "the enclosed message is a part of its own";
  EXPECT_EQ(parts[2].Find("From")->Value(), "inner@agency-b.test");
  EXPECT_TRUE(parts[2].IsSigned());
  EXPECT_EQ(parts[2].params.at("micalg"), "sha-256");
  EXPECT_EQ(Body(m, parts[3]), "signed text \r\n") << "trailing blanks and blank lines kept exactly";
  // A digest's parts default to message/rfc822.
  std::string d = "Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nx\r\n--d--\r\n";
  parts = Parse(d);
  ASSERT_GE(parts.size(), 3u);
  EXPECT_EQ(parts[1].type, "message");
  EXPECT_EQ(parts[2].Find("Subject")->Value(), "one");
}

TEST(MimeParser, DamageIsReportedNotFatal) {
  std::vector<Part> parts = Parse("Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nbody\r\n");
  ASSERT_EQ(parts.size(), 1u);
  EXPECT_NE(parts[0].problem.find("without boundary"), std::string::npos);
  parts = Parse("Content-Type: ???\r\nbad header line\r\n\r\nx");
  EXPECT_EQ(parts[0].type, "text");
  EXPECT_FALSE(parts[0].problem.empty());
  parts = Parse("Subject: cut off");
  EXPECT_EQ(parts[0].problem, "message ends inside a header");
}

TEST(MimeParser, LimitsGiveClearErrors) {
  std::string bomb;
  for (int i = 0; i < 20; ++i) bomb += "Content-Type: multipart/mixed; boundary=b" + std::to_string(i) + "\r\n\r\n--b" + std::to_string(i) + "\r\n";
  Status st;
  Parse(bomb, 0, &st);
  EXPECT_EQ(st.message(), "MIME nesting deeper than 16");
  std::string many = "Content-Type: multipart/mixed; boundary=b\r\n\r\n";
  for (int i = 0; i < 600; ++i) many += "--b\r\n\r\nx\r\n";
  Parse(many, 0, &st);
  EXPECT_EQ(st.message(), "more than 500 MIME parts");
  std::string big = "Subject: " + std::string(300 * 1024, 'a') + "\r\n\r\n";
  Parse(big, 4096, &st);
  EXPECT_EQ(st.message(), "header of MIME part 0 is larger than 262144 bytes");
  std::string fields;
  for (int i = 0; i < 1001; ++i) fields += "X-A: b\r\n";
  Parse(fields + "\r\n", 0, &st);
  EXPECT_EQ(st.message(), "more than 1000 header fields in one part");
  // A huge body line is fine: the parser keeps only its start.
  std::string huge = "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + std::string(10 << 20, 'z') + "\r\n--b--\r\n";
  std::vector<Part> parts = Parse(huge, 65536, &st);
  ASSERT_TRUE(st.ok()) << st.ToString();
  EXPECT_EQ(parts[1].end - parts[1].body_begin, 10u << 20);
}

}  // namespace
}  // namespace mailseal::mime

namespace mailseal::mime {
namespace {
TEST(MimeParser, EmptyBodyRightBeforeADelimiter) {  // found by fuzz_mime_parser
  std::string m = "Content-Type: multipart/mixed; boundary=s\r\n\r\n--s\r\nX: y\r\n\r\n--s\r\n\r\nz\r\n--s--\r\n";
  std::vector<Part> parts = Parse(m);
  ASSERT_EQ(parts.size(), 3u);
  EXPECT_EQ(parts[1].body_begin, parts[1].end);
  EXPECT_EQ(Body(m, parts[2]), "z");
}
}  // namespace
}  // namespace mailseal::mime
