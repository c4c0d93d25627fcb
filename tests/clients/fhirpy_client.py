"""Drives a running Sprig with fhirpy (PyPI), the way a Python integration would.

Usage: python3 fhirpy_client.py BASE_URL EXAMPLES_DIR
Runs every step, then exits non-zero naming the steps that failed.
"""

import json
import sys
import time
import uuid
from pathlib import Path

from fhirpy import SyncFHIRClient

base_url, examples = sys.argv[1], Path(sys.argv[2])
client = SyncFHIRClient(base_url)
unique = f"{int(time.time() * 1000)}-{uuid.uuid4().hex[:8]}"
failures = []


def read(name):
    return json.loads((examples / name).read_text(encoding="utf-8"))


def step(name, fn):
    try:
        result = fn()
    except Exception as error:  # noqa: BLE001 - every failure is reported by name
        print(f"FAILED {name}: {type(error).__name__}: {error}"[:600], file=sys.stderr)
        failures.append(name)
        return None
    print(f"ok {name}")
    return result


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def capability():
    cs = client.execute("metadata", method="get")
    expect(cs["resourceType"] == "CapabilityStatement", "not a CapabilityStatement")


step("capability", capability)

referral_json = read("referral-servicerequest.json")
referral_json["identifier"][0]["value"] = f"FPY-{unique}"
identifier = f'{referral_json["identifier"][0]["system"]}|{referral_json["identifier"][0]["value"]}'


def create():
    sr = client.resource("ServiceRequest", **referral_json)
    sr.save()
    expect(sr.id, "no id")
    return sr


created = step("create", create)
if created is None:
    sys.exit(1)


def resubmission():
    again, was_created = client.resources("ServiceRequest").search(identifier=identifier).get_or_create(
        client.resource("ServiceRequest", **referral_json)
    )
    expect(not was_created and again.id == created.id, "a resubmission made a second referral")


step("resubmission (conditional create)", resubmission)


def read_back():
    sr = client.reference("ServiceRequest", created.id).to_resource()
    expect(sr.id == created.id, "wrong resource")
    return sr


step("read", read_back)


def vread():
    version = created["meta"]["versionId"]
    sr = client.execute(f"ServiceRequest/{created.id}/_history/{version}", method="get")
    expect(sr["meta"]["versionId"] == version, "wrong version")


step("vread", vread)


def search_to_the_end():
    for i in range(3):
        more = read("referral-servicerequest.json")
        more["identifier"][0]["value"] = f"FPY-{unique}-{i}"
        client.resource("ServiceRequest", **more).save()
    everything = client.resources("ServiceRequest").limit(2).fetch_all()
    expect(len(everything) >= 4, f"paging found {len(everything)}")


step("search with paging to the end", search_to_the_end)


def count():
    total = client.resources("ServiceRequest").search(identifier=identifier).count()
    expect(total == 1, f"count() gave {total}")


step("count", count)


def elements_and_include():
    found = (
        client.resources("ServiceRequest")
        .search(identifier=identifier)
        .elements("status", "subject")
        .include("ServiceRequest", "subject")
        .fetch_raw()
    )
    expect(found["resourceType"] == "Bundle", "not a Bundle")


step("_elements and _include", elements_and_include)


def transaction():
    bundle = read("referral-transaction-bundle.json")
    bundle["entry"][0]["resource"]["identifier"][0]["value"] = f"FPY-TX-{unique}"
    system = bundle["entry"][0]["resource"]["identifier"][0]["system"]
    bundle["entry"][0]["request"]["ifNoneExist"] = f"identifier={system}|FPY-TX-{unique}"
    answer = client.execute("/", method="post", data=bundle)
    expect(answer["type"] == "transaction-response", f'got {answer.get("type")}')


step("transaction", transaction)


def process_message():
    message = read("referral-message-bundle.json")
    message["id"] = str(uuid.uuid4())
    for entry in message["entry"]:
        if entry["resource"]["resourceType"] == "ServiceRequest":
            entry["resource"]["identifier"][0]["value"] = f"FPY-MSG-{unique}"
    answer = client.execute("$process-message", method="post", data=message)
    expect(answer["resourceType"] == "Bundle" and answer["type"] == "message", "no reply message")


step("$process-message", process_message)


def validate():
    expect(client.resource("ServiceRequest", **referral_json).is_valid(), "not valid")


step("$validate", validate)


def update():
    sr = client.reference("ServiceRequest", created.id).to_resource()
    before = sr["meta"]["versionId"]
    sr["note"] = [{"text": "Prefers a morning call."}]
    sr.save()
    expect(sr["meta"]["versionId"] != before, "no new version")


step("update (save)", update)


def history():
    bundle = client.execute(f"ServiceRequest/{created.id}/_history", method="get")
    expect(bundle["type"] == "history" and len(bundle["entry"]) >= 2, "history lacks the update")


step("history", history)

if failures:
    print(f"{len(failures)} step(s) failed: {'; '.join(failures)}", file=sys.stderr)
    sys.exit(1)
