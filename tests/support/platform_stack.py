"""Every service's API and worker as separate processes, linked as `make run` links them;
used by the fault tests and by the benchmark."""

from __future__ import annotations

from tests.support.processes import ServiceApi, ServiceWorker

SERVICES = ("identity", "profile", "consent", "social", "export")


class PlatformStack:
    def __init__(self, env: dict):
        self.apis = {name: ServiceApi(name, env) for name in SERVICES}
        # the consent API asks identity for a data subject's profiles; social files platform
        # deletions with consent: each needs the other's address before it starts
        links = {"CDP_IDENTITY_URL": self.apis["identity"].url,
                 "CDP_CONSENT_URL": self.apis["consent"].url}
        for api in self.apis.values():
            api.env.update(links)
        self.workers = {name: ServiceWorker(f"services.{name}", {**env, **links},
                                            name=f"{name}-worker") for name in SERVICES}

    @property
    def processes(self) -> list:
        return [*self.apis.values(), *self.workers.values()]

    def start(self) -> PlatformStack:
        for process in [*self.workers.values(), *self.apis.values()]:
            process.start()
        return self

    def url(self, service: str) -> str:
        return self.apis[service].url

    def check_alive(self) -> None:
        dead = [process for process in self.processes if not process.alive()]
        assert not dead, "exited: " + ", ".join(f"{p.name}\n{p.tail()}" for p in dead)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
