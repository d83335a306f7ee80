"""`/health` and `/info`."""

from partners.services import partner_create


def test_health_is_200_when_every_database_answers(client, involve, rector):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "databases": {"default": "ok", "involve_asia_db": "ok", "rector_db": "ok"},
    }


def test_health_is_503_naming_the_failing_database(client, involve, backend):
    partner_create(
        partner_code="down",
        partner_name="Down",
        endpoint_path="/down/event",
        database_name="down_db",
        database_url="postgres://root@127.0.0.1:1/x" if backend == "postgres" else "sqlite:////nonexistent/d/x.sqlite3",
    )
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["failing"] == ["down_db"]
    assert body["databases"]["involve_asia_db"] == "ok"
    assert body["message"] == "Unreachable or not provisioned: down_db"


def test_health_serves_only_configured_partners(client, involve, rector, settings):
    settings.POSTBACK_PARTNERS = ["rector"]
    assert client.get("/health").json()["databases"] == {"default": "ok", "rector_db": "ok"}
    assert client.get("/partner/involve/event?conversion_id=x").status_code == 404
    assert client.get("/partner/rector/event?conversion_id=x").status_code == 200


def test_info_lists_partners_without_secrets(client, make_partner, tmp_path):
    make_partner("involve_asia", database_url=f"sqlite:///{tmp_path}/never-shown-s3cret.sqlite3")
    body = client.get("/info").json()
    assert body["version"]
    assert body["partners"] == [
        {
            "code": "involve_asia",
            "name": "InvolveAsia",
            "endpoint": "/involve/event",
            "postback_url": "http://testserver/partner/involve/event",
            "database": "involve_asia_db",
            "timezone": "UTC",
        }
    ]
    assert "s3cret" not in client.get("/info").content.decode()
