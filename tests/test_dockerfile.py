"""The Dockerfile cannot be built here (no engine); keep its promises checked."""

from conftest import REPO


def test_dockerfile_shape():
    text = (REPO / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "EXPOSE 8080/tcp" in text and "/udp" in text
    # Every package the wheel needs is copied into the build stage.
    for package in ("odsmedia", "signaling", "recorder", "web"):
        assert f"COPY {package} ./{package}" in text
    # setup.py (the compiled send loop) and a compiler to build it.
    assert "setup.py" in text and "gcc" in text
