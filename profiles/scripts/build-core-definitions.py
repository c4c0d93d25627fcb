#!/usr/bin/env python3
"""Build profiles/core/r4-core.json: the FHIR R4 core definitions Sprig's profile validator needs,
in a compact form, from the HL7 package hl7.fhir.r4.examples@4.0.1 (CC0).

What it keeps:
  * every StructureDefinition of the package with a snapshot (datatypes, resources, the core
    extension definitions and constraint profiles such as vitalsigns; logical models left out),
    snapshot only, each element reduced to what validation reads: id, path, min, max,
    types (code, targetProfile, profile), contentReference, fixed[x]/pattern[x], binding (strength
    and value set), constraint keys, slicing, sliceName, maxLength, minValue/maxValue;
  * the invariants (constraint key -> severity, human text, FHIRPath expression), once each;
  * for every value set bound with strength "required" or "extensible", its expansion computed here
    from the package's ValueSets and CodeSystems (Bundle-valuesets.json,
    Bundle-v3-valuesets.json, Bundle-v2-valuesets.json). A value set that draws on a code system the package does not hold in full
    (SNOMED CT, LOINC, UCUM, BCP-47, MIME types...) is written with "complete": false, so the
    validator reports such codes as not checked rather than passing or failing them.

Usage:
  profiles/scripts/build-core-definitions.py [PACKAGE_DIR]
PACKAGE_DIR is an unpacked package/ folder; without it the package is fetched with `npm pack`.
"""
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile

PACKAGE = "hl7.fhir.r4.examples@4.0.1"
OUT = pathlib.Path(__file__).resolve().parent.parent / "core" / "r4-core.json"
ELEMENT_KEYS = ("min", "sliceName", "contentReference", "maxLength")


def load_package(argv):
    if len(argv) > 1:
        return pathlib.Path(argv[1]), None
    tmp = tempfile.TemporaryDirectory()
    out = subprocess.run(["npm", "pack", PACKAGE], cwd=tmp.name, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tarfile.open(pathlib.Path(tmp.name) / out) as tar:
        tar.extractall(tmp.name, filter="data")
    return pathlib.Path(tmp.name) / "package", tmp


def resources(path):
    bundle = json.loads(path.read_text())
    return [entry["resource"] for entry in bundle.get("entry", []) if "resource" in entry]


def strip_version(url):
    return url.split("|")[0] if url else url


def compact_element(element, invariants):
    out = {"id": element["id"], "path": element["path"]}
    for key in ELEMENT_KEYS:
        if key in element:
            out[key] = element[key]
    out["max"] = None if element["max"] == "*" else int(element["max"])
    types = []
    for t in element.get("type", []):
        code = t["code"]
        for ext in t.get("extension", []):
            if ext["url"] == "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type":
                code = ext["valueUrl"]
        compact = {"code": code}
        for key in ("targetProfile", "profile"):
            if key in t:
                compact[key] = t[key]
        types.append(compact)
    if types:
        out["types"] = types
    for key, value in element.items():
        if key.startswith(("fixed", "pattern", "minValue", "maxValue")):
            out[key] = value
    if "binding" in element and "valueSet" in element["binding"]:
        out["binding"] = {"strength": element["binding"]["strength"],
                          "valueSet": strip_version(element["binding"]["valueSet"])}
    if "slicing" in element:
        out["slicing"] = element["slicing"]
    keys = []
    for c in element.get("constraint", []):
        if "expression" not in c:
            continue
        key = c["key"]
        spec = {"severity": c["severity"], "human": c["human"], "expression": c["expression"]}
        if key in invariants and invariants[key] != spec:
            # The same key with different text: keep them apart by source.
            key = f"{key}@{c.get('source', element['path'])}"
        invariants.setdefault(key, spec)
        keys.append(key)
    if keys:
        out["constraints"] = keys
    return out


class Terminology:
    def __init__(self, package):
        self.value_sets, self.code_systems = {}, {}
        for name in ("Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json"):
            path = package / name
            if not path.exists():
                continue
            for r in resources(path):
                if r["resourceType"] == "ValueSet":
                    self.value_sets.setdefault(r["url"], r)
                elif r["resourceType"] == "CodeSystem":
                    self.code_systems.setdefault(r["url"], r)
        # Single-file ValueSets and CodeSystems not in the bundles.
        for path in package.glob("ValueSet-*.json"):
            r = json.loads(path.read_text())
            self.value_sets.setdefault(r.get("url"), r)
        for path in package.glob("CodeSystem-*.json"):
            r = json.loads(path.read_text())
            self.code_systems.setdefault(r.get("url"), r)

    def concepts(self, system):
        """(code -> display, complete) for a whole code system."""
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") not in ("complete", None):
            return {}, False
        codes = {}

        def walk(concepts):
            for c in concepts:
                codes[c["code"]] = c.get("display")
                walk(c.get("concept", []))
        walk(cs.get("concept", []))
        return codes, bool(codes)

    def descendants(self, system, code, include_self):
        cs = self.code_systems.get(system)
        if cs is None:
            return None
        found = {}

        def walk(concepts, inside):
            for c in concepts:
                here = inside or c["code"] == code
                if here and (include_self or c["code"] != code):
                    found[c["code"]] = c.get("display")
                walk(c.get("concept", []), here)
        walk(cs.get("concept", []), False)
        return found

    def expand(self, url, seen=()):
        """{system: {code: display}}, complete?"""
        vs = self.value_sets.get(url)
        if vs is None or url in seen:
            return {}, False
        result, complete = {}, True
        compose = vs.get("compose")
        if compose is None:
            expansion = vs.get("expansion", {}).get("contains")
            if not expansion:
                return {}, False
            for c in expansion:
                result.setdefault(c["system"], {})[c["code"]] = c.get("display")
            return result, True
        for include in compose.get("include", []):
            part, ok = self.expand_include(include, seen + (url,))
            complete &= ok
            for system, codes in part.items():
                result.setdefault(system, {}).update(codes)
        for exclude in compose.get("exclude", []):
            part, _ = self.expand_include(exclude, seen + (url,))
            for system, codes in part.items():
                for code in codes:
                    result.get(system, {}).pop(code, None)
        return result, complete

    def expand_include(self, include, seen):
        result, complete = {}, True
        system = include.get("system")
        if "valueSet" in include:
            for nested in include["valueSet"]:
                part, ok = self.expand(strip_version(nested), seen)
                complete &= ok
                for s, codes in part.items():
                    result.setdefault(s, {}).update(codes)
            if system is None:
                return result, complete
        if system is None:
            return result, False
        if "concept" in include:
            known, _ = self.concepts(system)
            result[system] = {c["code"]: c.get("display") or known.get(c["code"]) for c in include["concept"]}
        elif "filter" in include:
            codes = None
            for f in include["filter"]:
                if f.get("property") == "concept" and f.get("op") in ("is-a", "descendent-of"):
                    part = self.descendants(system, f["value"], f["op"] == "is-a")
                else:
                    part = None
                if part is None:
                    return result, False
                codes = part if codes is None else {k: v for k, v in codes.items() if k in part}
            result[system] = codes or {}
        else:
            codes, ok = self.concepts(system)
            if not ok:
                return result, False
            result[system] = codes
        return result, complete


def compact_value_sets(terminology, urls):
    """The expansions of the value sets `urls`, in URL order, as the validator reads them."""
    value_sets = []
    for url in sorted(urls):
        codes, complete = terminology.expand(url)
        value_sets.append({
            "url": url,
            "complete": complete and bool(codes),
            "systems": {s: {c: d for c, d in sorted(cs.items())} for s, cs in sorted(codes.items())},
        })
    return value_sets


def main():
    package, _tmp = load_package(sys.argv)
    structure_definitions = []
    invariants = {}
    bound = {}
    seen = set()
    # Datatypes and resources first, then the core extension definitions and
    # constraint profiles (vitalsigns, …) that examples name in meta.profile.
    candidates = [sd for name in ("Bundle-types.json", "Bundle-resources.json")
                  for sd in resources(package / name)]
    candidates += [json.loads(path.read_text())
                   for path in sorted(package.glob("StructureDefinition-*.json"))]
    for sd in candidates:
        if sd["resourceType"] != "StructureDefinition" or sd["url"] in seen:
            continue
        if sd.get("kind") == "logical" or "snapshot" not in sd:
            continue
        seen.add(sd["url"])
        elements = [compact_element(e, invariants) for e in sd["snapshot"]["element"]]
        for e in elements:
            binding = e.get("binding")
            if binding and binding["strength"] in ("required", "extensible"):
                bound[binding["valueSet"]] = True
        compact = {k: sd[k] for k in ("url", "name", "type", "kind", "abstract") if k in sd}
        for k in ("baseDefinition", "derivation"):
            if k in sd:
                compact[k] = sd[k]
        compact["elements"] = elements
        structure_definitions.append(compact)

    value_sets = compact_value_sets(Terminology(package), bound)

    out = {
        "source": f"{PACKAGE} (HL7, CC0); built by profiles/scripts/build-core-definitions.py",
        "fhirVersion": "4.0.1",
        "structureDefinitions": structure_definitions,
        "invariants": dict(sorted(invariants.items())),
        "valueSets": value_sets,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, separators=(",", ":"), ensure_ascii=False) + "\n")
    complete = sum(1 for v in value_sets if v["complete"])
    print(f"wrote {OUT}: {len(structure_definitions)} StructureDefinitions, {len(invariants)} invariants, "
          f"{len(value_sets)} bound value sets ({complete} fully expanded), {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
