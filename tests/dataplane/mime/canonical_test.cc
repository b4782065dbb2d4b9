// Canonical 7-bit form for detached signatures (RFC 8551 §3.1; issue #4 "MIME"): 8-bit parts
// are re-encoded losslessly, 7-bit input stays byte-exact, signed parts are never touched.
#include "dataplane/mime/canonical.h"

#include <gtest/gtest.h>

namespace mailseal::mime {
namespace {

std::string DecodeQp(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out += s[i];
    } else if (i + 2 < s.size() && s[i + 1] == '\r' && s[i + 2] == '\n') {
      i += 2;  // soft line break
    } else if (i + 2 < s.size()) {
      out += static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    }
  }
  return out;
}

std::string DecodeB64(std::string_view s) {
  static const std::string kAlpha = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    size_t v = kAlpha.find(c);
    if (v == std::string::npos) continue;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    if ((bits += 6) >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  return out;
}

TEST(Canonical, SevenBitInputIsReturnedByteExact) {
  std::string m = "Subject: x\r\nContent-Type: text/plain\r\n\r\nplain ascii\r\n.\r\n";
  Result<std::string> c = ToSevenBit(m);
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(*c, m);
}

TEST(Canonical, EightBitTextBecomesQuotedPrintableAndBinaryBecomesBase64) {
  std::string binary;
  for (int i = 0; i < 300; ++i) binary += static_cast<char>(i % 256);
  std::string text = "Grüße, trailing space \r\nFrom here\r\n.dot\r\n" + std::string(1200, 'x');
  std::string m = "Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
                  "--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + text +
                  "\r\n--b\r\nContent-Type: application/octet-stream\r\n\r\n" + binary +
                  "\r\n--b\r\nContent-Type: text/plain\r\n\r\nalready fine\r\n--b--\r\n";
  Result<std::string> c = ToSevenBit(m);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_TRUE(IsSevenBitSafe(*c));
  Parser p;
  ASSERT_TRUE(p.Feed(*c).ok() && p.Finish().ok());
  const auto& parts = p.parts();
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[1].transfer_encoding, "quoted-printable");
  EXPECT_EQ(parts[2].transfer_encoding, "base64");
  EXPECT_EQ(parts[3].transfer_encoding, "7bit");
  auto body = [&](int i) { return c->substr(parts[i].body_begin, parts[i].end - parts[i].body_begin); };
  EXPECT_EQ(DecodeQp(body(1)), text) << "lossless, the 1200-byte line included";
  EXPECT_EQ(DecodeB64(body(2)), binary);
  EXPECT_EQ(body(3), "already fine") << "7-bit parts untouched";
  EXPECT_EQ(c->find("\r\nFrom here"), std::string::npos) << "no line starts with \"From \"";
}

TEST(Canonical, SignedPartsAreNeverTouched) {
  std::string m = "Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=s\r\n\r\n"
                  "--s\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: 8bit\r\n\r\nsigné\r\n"
                  "--s\r\nContent-Type: application/pkcs7-signature\r\n\r\nAAAA\r\n--s--\r\n";
  Result<std::string> c = ToSevenBit(m);
  EXPECT_EQ(c.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ToSevenBit("Subject: Grüße\r\n\r\nx\r\n").status().code(), StatusCode::kFailedPrecondition)
      << "UTF-8 headers cannot be made 7-bit here";
  // A message/rfc822 wrapper is looked into: the 8-bit part inside is re-encoded.
  Result<std::string> w = ToSevenBit("Content-Type: message/rfc822\r\n\r\nSubject: a\r\n\r\nbody ü\r\n");
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  EXPECT_NE(w->find("Content-Transfer-Encoding: quoted-printable\r\n\r\nbody =C3=BC\r\n"), std::string::npos) << *w;
}

TEST(Canonical, EncodersKeepLinesShort) {
  std::string qp = EncodeQuotedPrintable(std::string(500, '\xe9') + "\r\nend \r\n");
  EXPECT_TRUE(IsSevenBitSafe(qp));
  size_t start = 0;
  for (size_t e; (e = qp.find("\r\n", start)) != std::string::npos; start = e + 2) EXPECT_LE(e - start, 76u);
  EXPECT_EQ(DecodeQp(qp), std::string(500, '\xe9') + "\r\nend \r\n");
  EXPECT_NE(qp.find("end=20\r\n"), std::string::npos) << "trailing space is encoded";
  EXPECT_EQ(EncodeBase64Lines("foob"), "Zm9vYg==\r\n");
}

}  // namespace
}  // namespace mailseal::mime
