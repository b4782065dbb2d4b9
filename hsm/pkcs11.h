// pkcs11.h — the PKCS#11 2.40/3.0 API as p11-kit ships it (Debian libp11-kit-dev).
// The compatibility (non-GNU) names are used: CK_RV, CK_ATTRIBUTE, C_GetFunctionList...
#pragma once

#include <p11-kit/pkcs11.h>
