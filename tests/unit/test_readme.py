"""The README's configuration reference names every setting the configuration accepts."""

import dataclasses
import re
from pathlib import Path

from peerage import config

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = [config.ServerConfig, config.DatabaseConfig, config.DnsConfig, config.TlsConfig, config.DomainConfig,
            config.LimitsConfig, config.XmppConfig, config.ContactConfig, config.UploadConfig, config.RegistrationConfig, config.PushConfig, config.FederationConfig,
            config.FederationDomainPolicy, config.SipConfig, config.SmtpConfig, config.ImapConfig, config.WebConfig,
            config.MetricsConfig, config.AcmeConfig, config.TurnConfig,
            config.ClusterConfig, config.MucConfig, config.XmppWebSocketConfig,
            config.SocialConfig]
NESTED = {"federation", "domains", "contact", "upload", "registration", "push", "websocket", "bosh"}  # written as [xmpp.federation] and [xmpp.federation.domains."..."]


def test_every_setting_is_documented() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [f"{cls.__name__}.{field.name}" for cls in SECTIONS for field in dataclasses.fields(cls)
               if field.name not in NESTED and not re.search(rf"^{field.name}\s*=", readme, re.M)]
    assert not missing, f"README.md's configuration reference lacks: {missing}"
