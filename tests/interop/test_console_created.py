"""Blocks created in the web console, as a person fills its forms (plain form posts, as a
browser without script sends them), load unchanged with the stock Prefect client; run.sh
then loads the same bucket in Rust."""

import html
import json
import os
import re
import urllib.parse
import uuid

import httpx

CONSOLE = os.environ["PREFECT_API_URL"].removesuffix("/api")
ORIGIN = CONSOLE
CANARY = "canary-console-" + uuid.uuid4().hex[:8]
CREDS = "zoom-console-creds"
BUCKET = "zoom-console-gcs"


def throwaway_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def hidden(page, name):
    found = re.search(rf'name="{re.escape(name)}" value="([^"]*)"', page)
    assert found, f"no {name} in the page"
    return html.unescape(found.group(1))


def value_of(page, field, value):
    """The pairs that give `field` this value: a plain input, or the first alternative of
    an optional field's choice."""
    if f'name="data.{field}#choice"' in page:
        return [(f"data.{field}#choice", "0"), (f"data.{field}#a0", value)]
    assert f'name="data.{field}"' in page, f"no input for {field}"
    return [(f"data.{field}", value)]


def signed_in():
    client = httpx.Client(base_url=CONSOLE, headers={"Origin": ORIGIN}, follow_redirects=False)
    answer = client.post("/sign-in", data={"token": os.environ["BLOCKS_ADMIN_TOKEN"], "next": "/blocks"})
    assert answer.status_code == 303, answer.text
    # The cookie is `Secure`; httpx keeps it for this plain-HTTP loopback test only if told.
    cookie = answer.headers["set-cookie"].split(";")[0]
    client.headers["Cookie"] = cookie
    return client


def create(client, slug, name, fill):
    page = client.get(f"/blocks/new/{slug}").text
    pairs = [("_csrf", hidden(page, "_csrf")), ("_schema", hidden(page, "_schema")), ("_name", name)]
    pairs += fill(page)
    answer = client.post(
        f"/blocks/new/{slug}",
        content=urllib.parse.urlencode(pairs),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.status_code == 303, answer.text[-2000:]
    return answer.headers["location"]


def test_blocks_created_in_the_console_load_unchanged_in_python():
    from prefect_gcp.cloud_storage import GcsBucket

    client = signed_in()
    if client.get("/blocks/new/gcp-credentials").status_code == 404:
        # Not registered by a Prefect client yet: register the built-in collection.
        catalog = client.get("/catalog").text
        answer = client.post("/catalog/register", data={"_csrf": hidden(catalog, "_csrf"), "collection": "gcp"})
        assert answer.status_code == 303, answer.text
    key = {
        "type": "service_account",
        "project_id": "dtc-de",
        "private_key_id": CANARY,
        "private_key": throwaway_key(),
        "client_email": "console@dtc-de.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    creds_page = create(
        client,
        "gcp-credentials",
        CREDS,
        lambda page: [("data.service_account_info", json.dumps(key))] + value_of(page, "project", "dtc-de"),
    )
    creds_id = creds_page.split("/")[2].split("?")[0]
    detail = client.get(creds_page).text
    assert CANARY not in detail, "a secret reached the block's page"

    def bucket_fields(page):
        assert f'value="{creds_id}"' in page, "the new credentials are offered in the picker"
        return (
            value_of(page, "bucket", "dtc_data_lake_console")
            + [("data.gcp_credentials", creds_id)]
            + value_of(page, "bucket_folder", "from-console")
        )

    create(client, "gcs-bucket", BUCKET, bucket_fields)

    bucket = GcsBucket.load(BUCKET)
    assert bucket.bucket == "dtc_data_lake_console"
    assert bucket.bucket_folder.rstrip("/") == "from-console"
    assert bucket.gcp_credentials.project == "dtc-de"
    info = bucket.gcp_credentials.service_account_info.get_secret_value()
    assert info == key
    # Stored as a reference to the credentials block, not a copy.
    assert bucket.gcp_credentials._block_document_name == CREDS
