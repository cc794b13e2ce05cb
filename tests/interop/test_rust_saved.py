"""Blocks saved from Rust (registry-client's `save_blocks` example, run by run.sh just
before) load with the stock Prefect client."""

import os


def test_a_secret_saved_in_rust_loads_in_python():
    from prefect.blocks.system import Secret

    assert Secret.load("rust-secret").get() == os.environ["BLOCKS_EXAMPLE_SECRET"]


def test_a_nested_bucket_saved_in_rust_loads_in_python():
    from prefect_gcp.cloud_storage import GcsBucket

    bucket = GcsBucket.load("zoom-gcs")
    assert bucket.bucket == "dtc-data-lake"
    assert bucket.bucket_folder.rstrip("/") == "from-rust"
    assert bucket.gcp_credentials.project == "dtc-de"
    assert bucket.gcp_credentials.service_account_info.get_secret_value()["private_key_id"] == "rust"
    # Saved as a reference to the credentials document, not a copy.
    assert bucket.gcp_credentials._block_document_name == "zoom-gcp-creds"
