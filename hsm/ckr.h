// ckr.h — PKCS#11 types for mailseal, and CK_RV -> "CKR_NAME" for error messages.
#pragma once

#include <string>

#include "hsm/pkcs11.h"

namespace mailseal::hsm {

// CkrName: "CKR_PIN_INCORRECT"; unknown codes as "CKR_0x..." / "CKR_VENDOR_DEFINED+0x...".
std::string CkrName(CK_RV rv);

}  // namespace mailseal::hsm
