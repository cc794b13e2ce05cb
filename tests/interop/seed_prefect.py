"""Seeds a Prefect server (PREFECT_API_URL) with the course's blocks, holding SEED_CANARY in
their secrets: what `blocks import-prefect` then copies."""

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prefect.blocks.system import Secret
from prefect_gcp import GcpCredentials
from prefect_gcp.cloud_storage import GcsBucket
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
import os
canary = os.environ["SEED_CANARY"]
pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
info = {"type": "service_account", "project_id": "dtc-de", "private_key_id": canary, "private_key": pem,
        "client_email": "svc@dtc-de.iam.gserviceaccount.com", "client_id": "1", "token_uri": "https://oauth2.googleapis.com/token"}
GcpCredentials(service_account_info=info, project="dtc-de").save("zoom-gcp-creds", overwrite=True)
GcsBucket(bucket="dtc-data-lake", gcp_credentials=GcpCredentials.load("zoom-gcp-creds")).save("zoom-gcs", overwrite=True)
# Credentials never saved on their own: nested in the bucket's own data.
GcsBucket(bucket="inline-lake", gcp_credentials=GcpCredentials(service_account_info=info, project="inline")).save(
    "inline-gcs", overwrite=True)
Secret(value=canary).save("api-token", overwrite=True)
SqlAlchemyConnector(connection_info=ConnectionComponents(driver=SyncDriver.POSTGRESQL_PSYCOPG2, username="root",
    password=canary, host="localhost", port=5432, database="ny_taxi")).save("postgres-connector", overwrite=True)
print("seeded")
