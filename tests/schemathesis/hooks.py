"""Schemathesis hooks for tests/tests/schemathesis.rs.

They keep what the generated requests make on the host inside the test's
own directory, and small; everything else is sent as generated.

- A store's `path` (POST /storage/image-stores and /storage/volume-stores)
  is put under $APPLIANCE_SCHEMATHESIS_ROOT: an absolute `/x` becomes
  `ROOT/x`. The server refuses paths with `..` parts, so nothing is made
  outside ROOT; values that are not absolute paths are left for the server
  to refuse.
- A volume's `size_mib` (POST /storage/volumes) is capped at 64 MiB, so the
  run makes small disks.

Tar bodies (an import, a copy into a container) are sent as the bytes
generated for their binary schema, as `application/octet-stream` ones are.
"""

import os

import schemathesis

ROOT = os.environ["APPLIANCE_SCHEMATHESIS_ROOT"]
STORE_ADDS = {"/storage/image-stores", "/storage/volume-stores"}
MAX_VOLUME_MIB = 64

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.method.upper() != "POST" or not isinstance(case.body, dict):
        return
    if case.path in STORE_ADDS:
        path = case.body.get("path")
        if isinstance(path, str) and path.startswith("/") and not path.startswith(ROOT + "/"):
            case.body["path"] = ROOT + path
    elif case.path == "/storage/volumes":
        size = case.body.get("size_mib")
        if isinstance(size, int) and not isinstance(size, bool) and size > MAX_VOLUME_MIB:
            case.body["size_mib"] = MAX_VOLUME_MIB
