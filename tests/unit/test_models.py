from piserver.agents.models import public_model


def test_public_model_drops_credentials():
    model = {
        "id": "m",
        "provider": "p",
        "headers": {"Authorization": "secret"},
        "apiKey": "secret",
        "baseUrl": "http://x",
    }
    assert public_model(model) == {"id": "m", "provider": "p", "baseUrl": "http://x"}
    assert public_model(None) is None
