"""The course's scenarios, run with the stock Prefect client and CLI against `blocks serve`.

PREFECT_API_URL points at the server and PREFECT_API_KEY holds a token with the write and
read-secrets scopes (set by run.sh, which also passes an admin and a read-only token). Tests
run in file order: later ones use blocks saved by earlier ones.
"""

import json
import os
import subprocess
import sys
import urllib.request

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

CANARY = "canary-interop-5f1d"


def prefect(*args, env=None):
    """Runs the prefect CLI; returns (exit code, stdout + stderr)."""
    done = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "prefect"), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return done.returncode, done.stdout + done.stderr


def python(script, env):
    """Runs a Python script with the given environment changes (None removes a variable)."""
    full = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=full)


def admin_get(path):
    request = urllib.request.Request(
        os.environ["PREFECT_API_URL"] + path,
        headers={"Authorization": "Bearer " + os.environ["BLOCKS_ADMIN_TOKEN"]},
    )
    return json.load(urllib.request.urlopen(request))


@pytest.fixture(scope="module")
def service_account_info():
    # A throwaway RSA key: prefect-gcp parses it when the block is loaded.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "dtc-de",
        "private_key_id": CANARY,
        "private_key": pem,
        "client_email": "svc@dtc-de.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_register_collections():
    for module in ("prefect_gcp", "prefect_sqlalchemy"):
        code, out = prefect("block", "register", "-m", module)
        assert code == 0, out
        assert "Successfully registered" in out, out


ATTACK = """
import asyncio, json
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectAlreadyExists, PrefectHTTPStatusError
from prefect_gcp import GcpCredentials

async def main():
    out = {}
    async with get_client() as client:
        for name, block in (("secret", Secret), ("gcp", GcpCredentials)):
            block_type = await client.read_block_type_by_slug(block.get_block_type_slug())
            for version in (block.get_block_schema_version(), "9.9.9"):
                schema = block._to_block_schema(block_type_id=block_type.id)
                schema.fields["secret_fields"] = []
                schema.version = version
                try:
                    await client.create_block_schema(schema)
                    out[f"{name}@{version}"] = "created"
                except (PrefectHTTPStatusError, ObjectAlreadyExists) as e:
                    # The client turns a 409 into ObjectAlreadyExists, keeping the answer.
                    response = getattr(e, "http_exc", e).response
                    out[f"{name}@{version}"] = [response.status_code, response.json()]
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_write_token_cannot_register_prefects_schemas_without_their_secrets():
    # Before any Secret is saved: a `write` token registers Prefect's own schemas with no
    # secret_fields (their checksums ignore secret_fields), hoping later saves land unsealed.
    done = python(ATTACK, {"PREFECT_API_KEY": os.environ["BLOCKS_WRITE_TOKEN"]})
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # Secret marks `value` writeOnly/password in its JSON Schema: refused at any version.
    for key in ("secret@" + "3.9.1", "secret@9.9.9"):
        status, body = out[key]
        assert status == 422, out
        assert "fields.secret_fields" in json.dumps(body), out
    # GcpCredentials' SecretDict has no marker: the registered schema (same checksum and
    # version) is a conflict, another version is refused for a `write` token.
    assert out["gcp@0.6.22"][0] == 409, out
    assert out["gcp@9.9.9"][0] == 403, out
    assert "service_account_info" in json.dumps(out["gcp@9.9.9"][1]), out


def test_gcp_credentials_save_and_load(service_account_info):
    from prefect_gcp import GcpCredentials

    GcpCredentials(service_account_info=service_account_info, project="dtc-de").save("zoom-gcp-creds")
    loaded = GcpCredentials.load("zoom-gcp-creds")
    assert loaded.project == "dtc-de"
    assert loaded.service_account_info.get_secret_value() == service_account_info


def test_gcs_bucket_with_nested_credentials(service_account_info):
    from prefect_gcp import GcpCredentials
    from prefect_gcp.cloud_storage import GcsBucket

    credentials = GcpCredentials.load("zoom-gcp-creds")
    GcsBucket(bucket="dtc-data-lake", gcp_credentials=credentials).save("zoom-gcs")
    bucket = GcsBucket.load("zoom-gcs")
    assert bucket.bucket == "dtc-data-lake"
    assert bucket.gcp_credentials.project == "dtc-de"
    assert bucket.gcp_credentials.service_account_info.get_secret_value() == service_account_info
    # The nested block is a reference to the saved credentials, not a copy.
    assert bucket.gcp_credentials._block_document_name == "zoom-gcp-creds"


def test_sqlalchemy_connector_save_and_load():
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

    SqlAlchemyConnector(
        connection_info=ConnectionComponents(
            driver=SyncDriver.POSTGRESQL_PSYCOPG2,
            username="root",
            password=CANARY,
            host="localhost",
            port=5432,
            database="ny_taxi",
        )
    ).save("postgres-connector")
    loaded = SqlAlchemyConnector.load("postgres-connector")
    assert loaded.connection_info.host == "localhost"
    assert loaded.connection_info.port == 5432
    assert loaded.connection_info.password.get_secret_value() == CANARY


def test_secret_string_and_json():
    from prefect.blocks.system import Secret

    Secret(value=CANARY).save("api-token")
    assert Secret.load("api-token").get() == CANARY
    Secret(value={"username": "johndoe", "password": CANARY}).save("db-login")
    assert Secret.load("db-login").get() == {"username": "johndoe", "password": CANARY}


def test_saved_secrets_are_masked_for_a_read_token_and_sealed_at_rest():
    readonly = os.environ["BLOCKS_READONLY_TOKEN"]
    for slug, name, path in (
        ("secret", "api-token", ["value"]),
        ("gcp-credentials", "zoom-gcp-creds", ["service_account_info", "private_key_id"]),
    ):
        request = urllib.request.Request(
            f"{os.environ['PREFECT_API_URL']}/block_types/slug/{slug}/block_documents/name/{name}",
            headers={"Authorization": "Bearer " + readonly},
        )
        doc = json.load(urllib.request.urlopen(request))
        value = doc["data"]
        for key in path:
            value = value[key]
        assert value == "********", doc
        assert CANARY not in json.dumps(doc)


MOVE = """
import asyncio, json, sys
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.exceptions import PrefectHTTPStatusError

async def main():
    async with get_client() as client:
        doc = await client.read_block_document_by_name("api-token", "secret", include_secrets=False)
        block_type = await client.read_block_type_by_slug("secret")
        probe = Secret._to_block_schema(block_type_id=block_type.id)
        probe.fields["properties"]["value"] = {"type": "string", "pattern": "^canary", "writeOnly": True, "format": "password"}
        probe.version = "probe"
        schema = await client.create_block_schema(probe)
        try:
            await client.update_block_document(doc.id, BlockDocumentUpdate(block_schema_id=schema.id, data={}))
            print(json.dumps(["moved"]))
        except PrefectHTTPStatusError as e:
            print(json.dumps([e.response.status_code, e.response.json()]))

asyncio.run(main())
"""


def test_a_write_token_cannot_probe_a_secret_by_moving_its_document_to_another_schema():
    done = python(MOVE, {"PREFECT_API_KEY": os.environ["BLOCKS_WRITE_TOKEN"]})
    assert done.returncode == 0, done.stderr
    status, body = json.loads(done.stdout.strip().splitlines()[-1])
    assert status == 403, body
    assert "block_schema_id" in json.dumps(body) and "read-secrets" in json.dumps(body), body
    assert CANARY not in done.stdout + done.stderr


def test_name_conflict_raises_the_clients_error():
    from prefect.blocks.system import Secret

    with pytest.raises(ValueError, match="already in use"):
        Secret(value="other").save("api-token")


def test_save_with_overwrite():
    from prefect.blocks.system import Secret

    Secret(value="rotated").save("api-token", overwrite=True)
    assert Secret.load("api-token").get() == "rotated"


def test_cli_ls_inspect_type_ls_and_delete():
    code, out = prefect("block", "ls")
    assert code == 0, out
    for name in ("zoom-gcs", "zoom-gcp-creds", "postgres-connector", "api-token"):
        assert name in out, out

    code, out = prefect("block", "inspect", "gcs-bucket/zoom-gcs")
    assert code == 0, out
    assert "dtc-data-lake" in out
    assert "BEGIN PRIVATE KEY" not in out and CANARY not in out, "inspect shows secrets"

    code, out = prefect("block", "inspect", "secret/db-login")
    assert code == 0, out
    assert CANARY not in out, "a JSON-valued secret leaks in inspect"

    code, out = prefect("block", "type", "ls")
    assert code == 0, out
    assert "gcs-bucket" in out and "sqlalchemy-connector" in out and "secret" in out, out

    code, out = prefect("block", "delete", "secret/db-login")
    assert code == 0, out
    code, out = prefect("block", "inspect", "secret/db-login")
    assert code != 0


def test_a_load_opens_the_events_socket_without_warnings():
    # Prefect's events client authenticates its socket with PREFECT_API_AUTH_STRING; with
    # `<name>:<token>` the HTTP calls use the token too (as the Basic password).
    script = (
        "from prefect.blocks.system import Secret\n"
        "import time\n"
        "Secret.load('api-token')\n"
        "time.sleep(1.5)\n"
    )
    auth = "prefect:" + os.environ["PREFECT_API_KEY"]
    done = python(script, {"PREFECT_API_KEY": None, "PREFECT_API_AUTH_STRING": auth})
    assert done.returncode == 0, done.stderr
    assert "Unable to connect" not in done.stderr, done.stderr
    assert "Unable to authenticate" not in done.stderr, done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    with open(os.environ["BLOCKS_SERVER_LOG"]) as log:
        assert "prefect.block.secret.loaded" in log.read(), "the server did not record the load event"
    loads = admin_get("/audit?action=block.loaded")["records"]
    assert any("prefect.block.secret.loaded" in r["target"] for r in loads), loads


def test_a_read_only_token_reads_types_but_cannot_save_or_read_secrets():
    readonly = {"PREFECT_API_KEY": os.environ["BLOCKS_READONLY_TOKEN"]}
    code, out = prefect("block", "type", "ls", env=readonly)
    assert code == 0, out
    assert "gcs-bucket" in out, out
    # `prefect block ls` asks for secrets (include_secrets=true): a clean 403 naming the
    # scope, as design §9 says, never a silently masked listing.
    code, out = prefect("block", "ls", env=readonly)
    assert code != 0
    assert "403" in out and "read-secrets" in out, out

    done = python("from prefect.blocks.system import Secret\nSecret(value='x').save('ro-attempt')\n", readonly)
    assert done.returncode != 0
    assert "403" in done.stderr and "write scope" in done.stderr, done.stderr
    assert "PrefectHTTPStatusError" in done.stderr or "HTTPStatusError" in done.stderr, done.stderr

    # Block.load asks for secrets: refused, never silently masked.
    done = python("from prefect.blocks.system import Secret\nprint(Secret.load('api-token').get())\n", readonly)
    assert done.returncode != 0
    assert "403" in done.stderr and "read-secrets" in done.stderr, done.stderr

    code, out = prefect("block", "ls", env={"PREFECT_API_KEY": "blk_not-a-token"})
    assert code != 0
    assert "401" in out, out


def admin_post(path, body):
    request = urllib.request.Request(
        os.environ["PREFECT_API_URL"] + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + os.environ["BLOCKS_ADMIN_TOKEN"], "Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(request))


def limited_token(*grants):
    """A read-secrets token limited to the given `scope:type-slug/name` grants."""
    body = {
        "name": "interop limited",
        "scopes": ["read-secrets"],
        "grants": [{"scope": g.split(":")[0], "selector": g.split(":", 1)[1]} for g in grants],
        "ttl": "1h",
    }
    return admin_post("/tokens", body)["token"]


def test_a_token_limited_to_the_courses_blocks_loads_them_and_nothing_else():
    pipeline = {
        "PREFECT_API_KEY": limited_token(
            "read-secrets:gcs-bucket/zoom-gcs", "read-secrets:gcp-credentials/zoom-gcp-creds"
        )
    }
    done = python(
        "from prefect_gcp.cloud_storage import GcsBucket\n"
        "b = GcsBucket.load('zoom-gcs')\n"
        "print(b.bucket, b.gcp_credentials.project)\n",
        pipeline,
    )
    assert done.returncode == 0, done.stderr
    assert "dtc-data-lake dtc-de" in done.stdout
    # Another block is as absent as one that does not exist.
    done = python("from prefect.blocks.system import Secret\nprint(Secret.load('api-token').get())\n", pipeline)
    assert done.returncode != 0
    assert "Unable to find block document named api-token" in done.stderr or "404" in done.stderr, done.stderr
    assert CANARY not in done.stderr + done.stdout
    # The CLI lists only the granted blocks.
    code, out = prefect("block", "ls", env=pipeline)
    assert code == 0, out
    assert "zoom-gcs" in out and "zoom-gcp-creds" in out and "api-token" not in out, out

    # Without a grant on the nested credentials, the load is refused, naming them.
    bucket_only = {"PREFECT_API_KEY": limited_token("read-secrets:gcs-bucket/zoom-gcs")}
    done = python("from prefect_gcp.cloud_storage import GcsBucket\nGcsBucket.load('zoom-gcs')\n", bucket_only)
    assert done.returncode != 0
    assert "403" in done.stderr and "gcp-credentials/zoom-gcp-creds" in done.stderr, done.stderr
    assert CANARY not in done.stderr + done.stdout


def test_the_audit_log_records_writes_and_secret_reads_without_values():
    records = admin_get("/audit?limit=1000")["records"]
    actions = {r["action"] for r in records}
    assert "POST /api/block_documents/" in actions, actions
    assert any(r["target"].endswith("include_secrets=true") for r in records)
    assert any(r["outcome"] == "denied" for r in records)
    text = json.dumps(records)
    assert CANARY not in text and "BEGIN PRIVATE KEY" not in text


def test_no_secret_in_the_server_log():
    with open(os.environ["BLOCKS_SERVER_LOG"]) as log:
        text = log.read()
    assert CANARY not in text
    assert "BEGIN PRIVATE KEY" not in text
