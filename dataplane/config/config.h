// config.h — load and validate mailseald's configuration (proto/mailseal/v1/config.proto).
//
// SECURITY: the config file is trusted operator input but is still validated completely
// before the daemon touches anything: every error names file:line:column and the field.
#pragma once

#include <string>

#include "dataplane/base/status.h"
#include "mailseal/v1/config.pb.h"

namespace mailseal::config {

// LoadConfig parses the text-format file, applies defaults for zero fields and validates.
// Errors read "FILE:LINE:COLUMN: field 'x': what is wrong".
Result<mailseal::v1::Config> LoadConfig(const std::string& path);

// ParseConfigText does the same for text already in memory (`name` is used in messages).
Result<mailseal::v1::Config> ParseConfigText(const std::string& text, const std::string& name);

// ParseHostPort splits "1.2.3.4:25", "[::1]:25" or "host:25". Returns false on bad syntax.
bool ParseHostPort(const std::string& in, std::string* host, uint16_t* port);

}  // namespace mailseal::config
