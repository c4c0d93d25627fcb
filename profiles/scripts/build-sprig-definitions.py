#!/usr/bin/env python3
"""Build Sprig's social prescribing FHIR package from its authored source.

Reads profiles/sprig/ (one FHIR JSON file per resource: StructureDefinitions with a
`differential` only, CodeSystems, ValueSets) and writes:

  * profiles/published/<same file name>: each resource as published. StructureDefinitions get a
    `snapshot` generated here from their differential and their base's snapshot; everything else
    (the differential included) is the authored JSON unchanged, so the differential stays byte
    for byte what was written;
  * profiles/compiled/sprig.json: the compact form Sprig's validator reads, in exactly the format
    of profiles/core/r4-core.json (see build-core-definitions.py, whose helpers it reuses): our
    StructureDefinitions (snapshot elements reduced), our invariants (keys sprig-*), and our
    ValueSets expanded.

Snapshot generation follows the FHIR rules for the constructs Sprig's profiles use:
  * differential elements are matched to base elements by id, in snapshot order (an element out
    of order is an error, as in the IG Publisher);
  * children of a complex datatype (`Patient.identifier.system`) or of a resource narrowed from
    `Resource` (`Bundle.entry:x.resource.status`) are expanded from that type's snapshot when a
    differential element needs them;
  * a slice (`Patient.identifier:nhsNumber`) is a copy of the sliced element, as constrained so
    far, and its subtree, with ids rewritten `Path:slice.child`, inserted after the sliced
    element's subtree and earlier slices; a new slice starts at min 0;
  * a choice element may be named by type (`Observation.valueInteger`): it constrains
    `Observation.value[x]` and restricts its types to that one;
  * min and max may only narrow, types only narrow (a listed type or a specialisation of one;
    Reference and canonical targets only to the same type or a profile of it; any type for
    Reference(Resource)), bindings may not weaken a required or extensible binding and a
    required one may only be replaced by a subset; fixed[x], pattern[x], minValue[x] and
    maxValue[x] must match one of the element's types;
  * invariants (constraint) are added with `source` set to the profile; keys must be sprig-*.
Anything else in a differential element that is not documentation fails the build, as do: an
unknown element or base, a slice of an element without slicing, a slice whose discriminator path
has no fixed/pattern value (value, pattern) or no single type (type), a binding to a value set
neither Sprig nor the R4 package holds, a code in a fixed/pattern value or a value set that is not
in a code system we hold in full. Not supported (the build says so): contentReference elements,
discriminators through resolve() or extension(), slicing of an element the base already slices,
re-slicing, extension definitions.

The output is deterministic: running the script twice gives identical files.

Usage:
  profiles/scripts/build-sprig-definitions.py [--format] [PACKAGE_DIR]
PACKAGE_DIR is an unpacked hl7.fhir.r4.examples@4.0.1 package/ folder; without it the package is
fetched with `npm pack`. --format rewrites the authored files in the canonical layout (2-space
indent, UTF-8, newline at end) first; without it a file not in that layout stops the build.
"""
import copy
import importlib.util
import json
import pathlib
import sys

PROFILES = pathlib.Path(__file__).resolve().parent.parent
SOURCE = PROFILES / "sprig"
PUBLISHED = PROFILES / "published"
COMPILED = PROFILES / "compiled" / "sprig.json"
CORE_COMPACT = PROFILES / "core" / "r4-core.json"
CANONICAL = "https://sprig-gateway.org/fhir"
CORE_SD = "http://hl7.org/fhir/StructureDefinition/"
FHIR_VERSION = "4.0.1"

_spec = importlib.util.spec_from_file_location(
    "build_core_definitions", pathlib.Path(__file__).resolve().parent / "build-core-definitions.py")
core = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(core)

# ElementDefinition properties a differential may set that only document the element.
DOCUMENTATION = {"short", "definition", "comment", "requirements", "alias", "label", "code",
                 "meaningWhenMissing", "orderMeaning", "example", "mustSupport", "isModifierReason"}
STRENGTHS = ("example", "preferred", "extensible", "required")


class BuildError(Exception):
    pass


def canonical_text(resource):
    return json.dumps(resource, indent=2, ensure_ascii=False) + "\n"


def upper_first(code):
    return code[:1].upper() + code[1:]


def max_value(max_):
    return float("inf") if max_ == "*" else int(max_)


def id_to_path(element_id):
    """`Bundle.entry:referral.resource` -> `Bundle.entry.resource`."""
    return ".".join(part.split(":")[0] for part in element_id.split("."))


def codings(value):
    """Every (system, code) pair in a fixed/pattern value."""
    if isinstance(value, dict):
        if "system" in value and "code" in value:
            yield value["system"], value["code"]
        for v in value.values():
            yield from codings(v)
    elif isinstance(value, list):
        for v in value:
            yield from codings(v)


class Definitions:
    """The StructureDefinitions a snapshot may draw on: R4 core and ours."""

    def __init__(self, package):
        self.by_url = {}
        for name in ("Bundle-types.json", "Bundle-resources.json"):
            for sd in core.resources(package / name):
                if sd["resourceType"] == "StructureDefinition":
                    self.by_url[sd["url"]] = sd

    def get(self, url, context):
        sd = self.by_url.get(core.strip_version(url))
        if sd is None:
            raise BuildError(f"{context}: unknown StructureDefinition {url}")
        return sd

    def type_of(self, url, context):
        """The type a StructureDefinition (core or ours) defines or constrains."""
        return self.get(url, context)["type"]

    def is_a(self, type_code, ancestor):
        """True if type_code is ancestor or specialises it (ServiceRequest is a Resource)."""
        url = CORE_SD + type_code
        while url:
            sd = self.by_url.get(url)
            if sd is None:
                return False
            if sd["type"] == ancestor or sd["id"] == ancestor:
                return True
            url = sd.get("baseDefinition") if sd.get("derivation") == "specialization" else None
        return False


class Terminology(core.Terminology):
    """R4 package terminology plus Sprig's CodeSystems and ValueSets."""

    def add(self, resource):
        table = self.code_systems if resource["resourceType"] == "CodeSystem" else self.value_sets
        if resource["url"] in table:
            raise BuildError(f"{resource['url']} is defined twice")
        table[resource["url"]] = resource

    def holds(self, system):
        codes, complete = self.concepts(system)
        return codes if complete else None

    def check_codes(self, context, pairs):
        for system, code in pairs:
            held = self.holds(system)
            if held is not None and code not in held:
                raise BuildError(f"{context}: code {code!r} is not in code system {system}")


class Snapshot:
    """The snapshot of one profile, built from its base's snapshot and its differential."""

    def __init__(self, sd, base_elements, definitions, terminology):
        self.sd = sd
        self.url = sd["url"]
        self.definitions = definitions
        self.terminology = terminology
        self.elements = copy.deepcopy(base_elements)

    # -- lookup ----------------------------------------------------------------------------

    def fail(self, message):
        raise BuildError(f"{self.url}: {message}")

    def position(self, element_id):
        for i, e in enumerate(self.elements):
            if e["id"] == element_id:
                return i
        return None

    def get(self, element_id):
        i = self.position(element_id)
        return None if i is None else self.elements[i]

    def subtree_end(self, element_id, with_slices):
        """Index after the last element below element_id (and its slices, if asked)."""
        i = self.position(element_id)
        prefixes = (element_id + ".", element_id + ":") if with_slices else (element_id + ".",)
        end = i + 1
        while end < len(self.elements) and self.elements[end]["id"].startswith(prefixes):
            end += 1
        return end

    # -- locating and creating elements -----------------------------------------------------

    def locate(self, diff):
        """The snapshot element a differential element constrains, expanding datatypes, renaming
        choice types and creating a slice as needed."""
        element_id = diff.get("id")
        if not element_id:
            self.fail(f"differential element without id (path {diff.get('path')})")
        if diff.get("path") != id_to_path(element_id):
            self.fail(f"{element_id}: path {diff.get('path')!r} does not match the id")
        segments = element_id.split(".")
        current = segments[0]
        if current != self.sd["type"]:
            self.fail(f"{element_id}: does not start with the type {self.sd['type']}")
        for n, segment in enumerate(segments[1:], start=2):
            name, _, slice_name = segment.partition(":")
            child = f"{current}.{name}"
            if self.get(child) is None:
                self.expand(current)
            if self.get(child) is None:
                child = self.rename_choice(current, name)
            if slice_name:
                sliced = child
                child = f"{sliced}:{slice_name}"
                if self.get(child) is None:
                    if n != len(segments):
                        self.fail(f"{element_id}: slice {child} is used before it is defined")
                    self.create_slice(sliced, slice_name)
            current = child
        return self.get(current)

    def expand(self, element_id):
        """Insert the children of element_id's (single) type, if it has none yet."""
        element = self.get(element_id)
        if self.subtree_end(element_id, with_slices=False) > self.position(element_id) + 1:
            return
        if "contentReference" in element:
            self.fail(f"{element_id}: contentReference elements are not supported")
        types = element.get("type", [])
        if len(types) != 1:
            return  # nothing to expand into; the caller reports the unknown element
        type_code = types[0]["code"]
        type_sd = self.definitions.get(CORE_SD + type_code, f"{self.url} {element_id}")
        children = copy.deepcopy(type_sd["snapshot"]["element"][1:])
        root = type_sd["snapshot"]["element"][0]["path"]
        for child in children:
            child["id"] = element_id + child["id"][len(root):]
            child["path"] = element["path"] + child["path"][len(root):]
        at = self.position(element_id) + 1
        self.elements[at:at] = children

    def rename_choice(self, parent_id, name):
        """`valueInteger` under parent_id: the `value[x]` element, restricted to integer."""
        for e in self.elements:
            if not (e["id"].startswith(parent_id + ".") and e["id"].endswith("[x]")):
                continue
            base = e["id"][len(parent_id) + 1:-3]
            if "." in base or ":" in base or not name.startswith(base):
                continue
            wanted = name[len(base):]
            matching = [t for t in e.get("type", []) if upper_first(t["code"]) == wanted]
            if matching:
                e["type"] = copy.deepcopy(matching)
                return e["id"]
        self.fail(f"unknown element {parent_id}.{name}")

    def create_slice(self, sliced_id, slice_name):
        sliced = self.get(sliced_id)
        if "slicing" not in sliced:
            self.fail(f"slice {sliced_id}:{slice_name} of an element without slicing")
        start = self.position(sliced_id)
        subtree = self.elements[start:self.subtree_end(sliced_id, with_slices=False)]
        copies = []
        for e in copy.deepcopy(subtree):
            e["id"] = f"{sliced_id}:{slice_name}" + e["id"][len(sliced_id):]
            copies.append(e)
        root = copies[0]
        del root["slicing"]
        root["sliceName"] = slice_name
        root["min"] = 0
        # sliceName goes right after path, as in published snapshots.
        ordered = {k: root[k] for k in ("id", "path", "sliceName")}
        ordered.update((k, v) for k, v in root.items() if k not in ordered)
        copies[0] = ordered
        at = self.subtree_end(sliced_id, with_slices=True)
        self.elements[at:at] = copies

    # -- merging -----------------------------------------------------------------------------

    def merge(self, diff):
        element = self.locate(diff)
        where = element["id"]
        for key, value in diff.items():
            if key in ("id", "path"):
                continue
            if key == "sliceName":
                if element.get("sliceName") != value:
                    self.fail(f"{where}: sliceName {value!r} does not match the id")
            elif key == "min":
                if value < element["min"]:
                    self.fail(f"{where}: min {value} is below the base's {element['min']}")
                element["min"] = value
            elif key == "max":
                if max_value(value) > max_value(element["max"]):
                    self.fail(f"{where}: max {value} is above the base's {element['max']}")
                element["max"] = value
            elif key == "type":
                element["type"] = self.narrow_types(where, element.get("type", []), value)
            elif key == "binding":
                element["binding"] = self.narrow_binding(where, element.get("binding"), value)
            elif key == "constraint":
                self.add_constraints(element, value)
            elif key == "slicing":
                if "slicing" in element:
                    self.fail(f"{where}: is already sliced (re-slicing is not supported)")
                if element["max"] == "1" and not element["path"].endswith("[x]"):
                    self.fail(f"{where}: cannot slice an element that does not repeat")
                element["slicing"] = copy.deepcopy(value)
            elif key.startswith(("fixed", "pattern", "minValue", "maxValue")):
                self.set_value(element, key, value)
            elif key == "maxLength" or key in DOCUMENTATION:
                element[key] = copy.deepcopy(value)
            else:
                self.fail(f"{where}: the build does not support {key!r} in a differential")
        if max_value(element["max"]) < element["min"]:
            self.fail(f"{where}: min {element['min']} is above max {element['max']}")
        return element

    def narrow_types(self, where, base_types, new_types):
        out = []
        for t in new_types:
            code = t["code"]
            base = next((b for b in base_types
                         if b["code"] == code or self.definitions.is_a(code, b["code"])), None)
            if base is None:
                self.fail(f"{where}: type {code} is not allowed by the base "
                          f"({', '.join(b['code'] for b in base_types)})")
            for target in t.get("targetProfile", []):
                allowed = base.get("targetProfile", [])
                target_type = self.definitions.type_of(target, f"{self.url} {where}")
                if allowed and not any(a == CORE_SD + "Resource"
                           or self.definitions.type_of(a, where) == target_type for a in allowed):
                    self.fail(f"{where}: target {target} is not allowed by the base")
            for profile in t.get("profile", []):
                if not self.definitions.is_a(self.definitions.type_of(profile, where), code):
                    self.fail(f"{where}: profile {profile} does not constrain {code}")
            out.append(copy.deepcopy(t))
        return out

    def narrow_binding(self, where, base, new):
        url = new.get("valueSet")
        if new.get("strength") not in STRENGTHS or not url:
            self.fail(f"{where}: a binding needs a strength and a valueSet")
        if url not in self.terminology.value_sets:
            self.fail(f"{where}: binding to unknown value set {url}")
        merged = copy.deepcopy(new)
        if base:
            strength, base_strength = STRENGTHS.index(new["strength"]), STRENGTHS.index(base["strength"])
            if base["strength"] in ("extensible", "required") and strength < base_strength:
                self.fail(f"{where}: binding strength {new['strength']} weakens the base's {base['strength']}")
            if base["strength"] == "required":
                ours, ok = self.terminology.expand(url)
                theirs, base_ok = self.terminology.expand(core.strip_version(base["valueSet"]))
                if not (ok and base_ok):
                    self.fail(f"{where}: cannot check {url} against the base's {base['valueSet']}")
                for system, codes in ours.items():
                    extra = set(codes) - set(theirs.get(system, {}))
                    if extra:
                        self.fail(f"{where}: {url} has codes outside the base's required "
                                  f"{base['valueSet']}: {sorted(extra)}")
            for key in ("extension", "description"):
                if key in base and key not in merged:
                    merged[key] = copy.deepcopy(base[key])
        return merged

    def add_constraints(self, element, constraints):
        existing = {c["key"] for c in element.get("constraint", [])}
        for c in constraints:
            missing = {"key", "severity", "human", "expression"} - set(c)
            if missing:
                self.fail(f"{element['id']}: constraint lacks {sorted(missing)}")
            if not c["key"].startswith("sprig-"):
                self.fail(f"{element['id']}: constraint key {c['key']} is not sprig-*")
            if c["key"] in existing:
                self.fail(f"{element['id']}: constraint {c['key']} is defined twice")
            existing.add(c["key"])
            element.setdefault("constraint", []).append(dict(c, source=self.url))

    def set_value(self, element, key, value):
        kind = next(p for p in ("fixed", "pattern", "minValue", "maxValue") if key.startswith(p))
        type_name = key[len(kind):]
        if not any(upper_first(t["code"]) == type_name for t in element.get("type", [])):
            self.fail(f"{element['id']}: {key} does not match the element's types")
        for other in [k for k in element if k.startswith(kind)]:
            del element[other]
        self.terminology.check_codes(f"{self.url} {element['id']}", codings(value))
        element[key] = copy.deepcopy(value)

    # -- whole-snapshot checks -----------------------------------------------------------------

    def check_slicing(self):
        for e in self.elements:
            if "slicing" not in e:
                continue
            slices = [s for s in self.elements
                      if s["id"].startswith(e["id"] + ":") and s["id"].count(":") == e["id"].count(":") + 1
                      and "." not in s["id"][len(e["id"]):]]
            if sum(s["min"] for s in slices) > max_value(e["max"]):
                self.fail(f"{e['id']}: its slices need more items than max {e['max']}")
            for s in slices:
                if max_value(s["max"]) > max_value(e["max"]):
                    self.fail(f"{s['id']}: max {s['max']} is above the sliced element's {e['max']}")
                for d in e["slicing"].get("discriminator", []):
                    self.check_discriminator(s, d)

    def check_discriminator(self, slice_element, discriminator):
        path, kind = discriminator["path"], discriminator["type"]
        if "resolve()" in path or "extension(" in path:
            self.fail(f"{slice_element['id']}: discriminator path {path} is not supported")
        target_id = slice_element["id"] if path == "$this" else f"{slice_element['id']}.{path}"
        target = self.get(target_id)
        if target is None:
            self.fail(f"{slice_element['id']}: discriminator path {path} names no element")
        if kind in ("value", "pattern"):
            if not any(k.startswith(("fixed", "pattern")) for k in target):
                self.fail(f"{slice_element['id']}: no fixed or pattern value at discriminator path {path}")
        elif kind == "type":
            if len(target.get("type", [])) != 1:
                self.fail(f"{slice_element['id']}: discriminator path {path} needs exactly one type")
        elif kind == "profile":
            if not any(t.get("profile") for t in target.get("type", [])):
                self.fail(f"{slice_element['id']}: no profile at discriminator path {path}")
        elif kind != "exists":
            self.fail(f"{slice_element['id']}: unknown discriminator type {kind}")

    def build(self):
        merged = [self.merge(diff) for diff in self.sd["differential"]["element"]]
        positions = [self.position(e["id"]) for e in merged]
        for earlier, later, diff in zip(positions, positions[1:], self.sd["differential"]["element"][1:]):
            if later <= earlier:
                self.fail(f"differential element {diff['id']} is out of snapshot order")
        self.check_slicing()
        ids = [e["id"] for e in self.elements]
        if len(ids) != len(set(ids)):
            self.fail("duplicate element ids in the snapshot")
        return self.elements


def load_source(reformat):
    resources = []
    for path in sorted(SOURCE.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        resource = json.loads(text)
        expected = f"{resource.get('resourceType')}-{resource.get('id')}.json"
        if path.name != expected:
            raise BuildError(f"{path.name}: should be named {expected}")
        kind = resource["resourceType"]
        if kind not in ("StructureDefinition", "CodeSystem", "ValueSet"):
            raise BuildError(f"{path.name}: unexpected resourceType {kind}")
        if resource.get("url") != f"{CANONICAL}/{kind}/{resource['id']}":
            raise BuildError(f"{path.name}: url should be {CANONICAL}/{kind}/{resource['id']}")
        for key in ("status", "publisher", "description"):
            if not resource.get(key):
                raise BuildError(f"{path.name}: {key} is required")
        if kind == "StructureDefinition":
            if resource.get("fhirVersion") != FHIR_VERSION or "snapshot" in resource:
                raise BuildError(f"{path.name}: needs fhirVersion {FHIR_VERSION} and no snapshot")
            if resource.get("derivation") != "constraint":
                raise BuildError(f"{path.name}: only constraint profiles are supported")
        if text != canonical_text(resource):
            if not reformat:
                raise BuildError(f"{path.name}: not in the canonical layout (2-space indent, UTF-8, "
                                 "final newline); run with --format")
            path.write_text(canonical_text(resource), encoding="utf-8")
        resources.append((path.name, resource))
    return resources


def in_base_order(profiles):
    """Profiles ordered so that a profile comes after a base that is also ours."""
    ours = {sd["url"]: sd for sd in profiles}
    done, out = set(), []

    def visit(sd, stack):
        if sd["url"] in done:
            return
        if sd["url"] in stack:
            raise BuildError(f"{sd['url']}: circular baseDefinition")
        base = ours.get(sd["baseDefinition"])
        if base:
            visit(base, stack + (sd["url"],))
        done.add(sd["url"])
        out.append(sd)

    for sd in sorted(profiles, key=lambda sd: sd["url"]):
        visit(sd, ())
    return out


def main():
    args = sys.argv[1:]
    reformat = "--format" in args
    args = [a for a in args if a != "--format"]
    package, _tmp = core.load_package([sys.argv[0], *args])
    source = load_source(reformat)

    definitions = Definitions(package)
    terminology = Terminology(package)
    for _, r in source:
        if r["resourceType"] != "StructureDefinition":
            terminology.add(r)
    for _, vs in source:
        if vs["resourceType"] == "ValueSet":
            for include in vs.get("compose", {}).get("include", []):
                terminology.check_codes(vs["url"], ((include.get("system"), c["code"])
                                                    for c in include.get("concept", [])))
            codes, _ = terminology.expand(vs["url"])
            if not codes:
                raise BuildError(f"{vs['url']}: expands to nothing")

    profiles = [r for _, r in source if r["resourceType"] == "StructureDefinition"]
    for sd in profiles:
        if sd["url"] in definitions.by_url:
            raise BuildError(f"{sd['url']} is defined twice")
        definitions.by_url[sd["url"]] = sd  # type_of() needs ours before their snapshots exist
    snapshots = {}
    for sd in in_base_order(profiles):
        base = definitions.get(sd["baseDefinition"], sd["url"])
        if base["type"] != sd["type"]:
            raise BuildError(f"{sd['url']}: type {sd['type']} differs from its base's {base['type']}")
        base_elements = snapshots.get(base["url"]) or base["snapshot"]["element"]
        snapshots[sd["url"]] = Snapshot(sd, base_elements, definitions, terminology).build()

    # The published package: authored JSON, plus the snapshot for StructureDefinitions.
    PUBLISHED.mkdir(parents=True, exist_ok=True)
    written = set()
    for name, resource in source:
        if resource["resourceType"] == "StructureDefinition":
            resource = dict(resource, snapshot={"element": snapshots[resource["url"]]})
        (PUBLISHED / name).write_text(canonical_text(resource), encoding="utf-8")
        written.add(name)
    for stale in PUBLISHED.glob("*.json"):
        if stale.name not in written:
            stale.unlink()

    # The compact form, as profiles/core/r4-core.json.
    core_compact = json.loads(CORE_COMPACT.read_text(encoding="utf-8"))
    core_value_sets = {vs["url"] for vs in core_compact["valueSets"]}
    our_value_sets = {r["url"] for _, r in source if r["resourceType"] == "ValueSet"}
    invariants = dict(core_compact["invariants"])
    structure_definitions = []
    for sd in sorted(profiles, key=lambda sd: sd["url"]):
        elements = [core.compact_element(e, invariants) for e in snapshots[sd["url"]]]
        for e in elements:
            binding = e.get("binding")
            if (binding and binding["strength"] in ("required", "extensible")
                    and binding["valueSet"] not in core_value_sets | our_value_sets):
                raise BuildError(f"{sd['url']} {e['id']}: {binding['valueSet']} is not expanded "
                                 "in r4-core.json or here")
        compact = {k: sd[k] for k in ("url", "name", "type", "kind", "abstract",
                                      "baseDefinition", "derivation")}
        compact["elements"] = elements
        structure_definitions.append(compact)
    ours = {k: v for k, v in invariants.items() if k not in core_compact["invariants"]}
    strays = [k for k in ours if not k.startswith("sprig-")]
    if strays:
        raise BuildError(f"invariants that are neither sprig-* nor in r4-core.json: {strays}")

    value_sets = core.compact_value_sets(terminology, our_value_sets)

    out = {
        "source": "profiles/sprig/ (Sprig, CC0) on hl7.fhir.r4.examples@4.0.1 (HL7, CC0); "
                  "built by profiles/scripts/build-sprig-definitions.py",
        "fhirVersion": FHIR_VERSION,
        "structureDefinitions": structure_definitions,
        "invariants": dict(sorted(ours.items())),
        "valueSets": value_sets,
    }
    COMPILED.parent.mkdir(parents=True, exist_ok=True)
    COMPILED.write_text(json.dumps(out, separators=(",", ":"), ensure_ascii=False) + "\n",
                        encoding="utf-8")
    complete = sum(1 for v in value_sets if v["complete"])
    print(f"wrote {PUBLISHED}/ ({len(written)} resources) and {COMPILED}: "
          f"{len(structure_definitions)} profiles, {len(ours)} invariants, {len(value_sets)} value "
          f"sets ({complete} fully expanded), {COMPILED.stat().st_size} bytes")


if __name__ == "__main__":
    try:
        main()
    except BuildError as error:
        sys.exit(f"build-sprig-definitions: {error}")
