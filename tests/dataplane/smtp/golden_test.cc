// Golden transcripts for the SMTP server: tests/dataplane/smtp/golden/NAME.in holds client
// input, NAME.ref the exact server output with the handler's events interleaved.
// Both files are escaped text: each line is a chunk, "\r" "\n" "\xNN" "\\" are escapes and the
// file's own newlines are ignored, so bare LF/CR stay visible. Each transcript is run in one
// piece and byte by byte; both must give the .ref.
#include <dirent.h>
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "tests/dataplane/smtp/test_handler.h"

namespace mailseal::smtp {
namespace {

std::string Unescape(const std::string& text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '\n') continue;
    if (c != '\\' || i + 1 >= text.size()) {
      out += c;
      continue;
    }
    char e = text[++i];
    if (e == 'r') out += '\r';
    else if (e == 'n') out += '\n';
    else if (e == '\\') out += '\\';
    else if (e == 'x' && i + 2 < text.size()) {
      out += static_cast<char>(std::stoi(text.substr(i + 1, 2), nullptr, 16));
      i += 2;
    } else out += e;
  }
  return out;
}

std::string Escape(const std::string& bytes) {
  std::string out;
  for (unsigned char c : bytes) {
    if (c == '\r') out += "\\r";
    else if (c == '\n') out += "\\n\n";
    else if (c == '\\') out += "\\\\";
    else if (c < 32 || c >= 127) {
      char b[8];
      snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else out += static_cast<char>(c);
  }
  return out;
}

class EventHandler : public testing::RecordingHandler {
 public:
  std::string* log = nullptr;
  void OnDataEnd(const Transaction& t) override {
    log->append(session->TakeOutput());
    log->append("[message from=<" + t.mail_from + "> rcpts=" + std::to_string(t.recipients.size()) +
                " body=" + current + "]\n");
    RecordingHandler::OnDataEnd(t);
  }
  void OnDataAbort() override {
    log->append(session->TakeOutput());
    log->append("[abort]\n");
    RecordingHandler::OnDataAbort();
  }
};

std::string RunTranscript(const std::string& input, bool bytewise) {
  std::string log;
  EventHandler h;
  h.log = &log;
  ServerOptions o;
  o.hostname = "gw.test";
  o.limits.max_recipients = 5;
  ServerSession s(o, &h);
  h.session = &s;
  s.Start();
  if (bytewise) {
    for (char c : input) s.Feed(std::string_view(&c, 1));
  } else {
    s.Feed(input);
  }
  log += s.TakeOutput();
  return log;
}

std::string ReadFile(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(GoldenTranscripts, AllMatch) {
  std::string dir = std::string(MAILSEAL_SOURCE_DIR) + "/tests/dataplane/smtp/golden";
  DIR* d = opendir(dir.c_str());
  ASSERT_NE(d, nullptr);
  int count = 0;
  while (dirent* e = readdir(d)) {
    std::string name = e->d_name;
    if (name.size() < 4 || name.substr(name.size() - 3) != ".in") continue;
    std::string base = dir + "/" + name.substr(0, name.size() - 3);
    std::string input = Unescape(ReadFile(base + ".in"));
    std::string want = Unescape(ReadFile(base + ".ref"));
    std::string whole = RunTranscript(input, false);
    if (getenv("MAILSEAL_UPDATE_GOLDEN")) {
      std::ofstream(base + ".ref", std::ios::binary) << Escape(whole);
      continue;
    }
    EXPECT_EQ(Escape(whole), Escape(want)) << name << " (in one piece)";
    EXPECT_EQ(Escape(RunTranscript(input, true)), Escape(want)) << name << " (byte by byte)";
    ++count;
  }
  closedir(d);
  EXPECT_GE(count, 4);
}

}  // namespace
}  // namespace mailseal::smtp
