"""Several clusters in the configuration: CHATOPS_CLUSTERS, channel defaults, per-cluster keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from chatbot.cluster_config import DEFAULT_CLUSTER, Clusters, env_name, load_clusters
from chatbot.config import ConfigError, load_settings

REDIS = "redis://127.0.0.1:6390/1"
AMQP = "amqp://guest:s3cret@127.0.0.1:5672//"


def clusters_of(env: dict[str, str], config: Path | None = None) -> Clusters:
    return load_clusters(load_settings(env, config_path=config))


def test_broker_url_alone_is_one_cluster_named_default_with_the_settings_unchanged() -> None:
    settings = load_settings({"CELERY_BROKER_URL": REDIS, "CHATOPS_QUEUES": "a,b"})
    clusters = load_clusters(settings)
    assert clusters.names == (DEFAULT_CLUSTER,)
    only = clusters.clusters[0]
    # The same settings: one-broker deployments keep their state prefix, snapshot and all.
    assert only.settings == settings
    assert clusters.default_for("C999") == DEFAULT_CLUSTER
    assert not clusters.several


def test_several_clusters_each_with_its_broker_and_its_own_state_prefix() -> None:
    clusters = clusters_of({"CHATOPS_CLUSTERS": f"prod={REDIS}, billing-eu={AMQP}"})
    assert clusters.names == ("prod", "billing-eu")
    prod, billing = clusters.clusters
    assert prod.broker_url == REDIS and billing.broker_url == AMQP
    assert prod.state_prefix == "chatops:cluster:prod"
    assert billing.state_prefix == "chatops:cluster:billing-eu"
    assert clusters.several
    assert clusters.default_for("C1") is None


def test_a_cluster_named_default_keeps_the_plain_prefix() -> None:
    clusters = clusters_of(
        {"CHATOPS_CLUSTERS": f"default={REDIS},beta={AMQP}", "CHATOPS_STATE_PREFIX": "bot"}
    )
    assert [c.state_prefix for c in clusters] == ["bot", "bot:cluster:beta"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (f"Prod={REDIS}", "cluster 'Prod': a name is lower-case"),
        (f"pr od={REDIS}", "cluster 'pr od'"),
        (f"-x={REDIS}", "cluster '-x'"),
        (f"all={REDIS}", "cluster 'all': the name is reserved"),
        (f"a={REDIS},a={AMQP}", "cluster 'a' is listed twice"),
        (f"a-b={REDIS},a_b={AMQP}", "clusters 'a-b' and 'a_b' both have the keys"),
        ("a=http://example.com/", "cluster 'a': unsupported scheme http://"),
        ("a=", "cluster 'a': no broker URL"),
        (AMQP, "expected NAME=BROKER_URL pairs"),
        (f"={REDIS}", "a cluster has an empty name"),
    ],
)
def test_bad_cluster_lists_are_refused_naming_the_cluster(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CHATOPS_CLUSTERS": raw})
    message = str(caught.value)
    assert message.startswith("CHATOPS_CLUSTERS: ")
    assert expected in message
    assert "s3cret" not in message and "\n" not in message


def test_a_broker_url_beside_clusters_must_be_one_of_them() -> None:
    with pytest.raises(ConfigError, match="CHATOPS_CLUSTERS: set together with CELERY_BROKER"):
        load_settings({"CHATOPS_CLUSTERS": f"a={REDIS}", "CELERY_BROKER_URL": AMQP})
    # The same URL listed as a cluster is fine (a deployment adding a second cluster).
    clusters = clusters_of({"CHATOPS_CLUSTERS": f"a={REDIS},b={AMQP}", "CELERY_BROKER_URL": REDIS})
    assert clusters.names == ("a", "b")


def test_channel_defaults() -> None:
    clusters = clusters_of(
        {
            "CHATOPS_CLUSTERS": f"alpha={REDIS},beta={AMQP}",
            "CHATOPS_CHANNEL_CLUSTERS": "C0ALPHA=alpha, G0BETA=beta",
        }
    )
    assert clusters.default_for("C0ALPHA") == "alpha"
    assert clusters.default_for("G0BETA") == "beta"
    assert clusters.default_for("C0OTHER") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("C0ALPHA=gamma", "channel C0ALPHA: unknown cluster 'gamma' (clusters: alpha, beta)"),
        ("alpha=C0ALPHA", "'alpha' is not a Slack channel ID"),
        ("C0ALPHA", "expected CHANNEL_ID=CLUSTER pairs"),
        ("C0ALPHA=alpha,C0ALPHA=beta", "channel C0ALPHA is listed twice"),
    ],
)
def test_bad_channel_defaults_are_refused(raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            {"CHATOPS_CLUSTERS": f"alpha={REDIS},beta={AMQP}", "CHATOPS_CHANNEL_CLUSTERS": raw}
        )
    assert str(caught.value).startswith("CHATOPS_CHANNEL_CLUSTERS: ")
    assert expected in str(caught.value)


def test_per_cluster_overrides_apply_to_that_cluster_only() -> None:
    clusters = clusters_of(
        {
            "CHATOPS_CLUSTERS": f"prod={REDIS},billing-eu={AMQP}",
            "CHATOPS_BACKLOG_THRESHOLD": "100",
            "CHATOPS_CLUSTER_PROD_BACKLOG_THRESHOLD": "500",
            "CHATOPS_CLUSTER_PROD_QUEUES": "emails, reports",
            "CHATOPS_CLUSTER_BILLING_EU_ALERT_CHANNEL": "C0BILLING",
            "CHATOPS_CLUSTER_BILLING_EU_STUCK_AFTER": "60",
            "CHATOPS_ALERT_CHANNEL": "C0SHARED",
        }
    )
    prod, billing = clusters.clusters
    assert prod.settings.backlog_threshold == 500
    assert prod.settings.queues == ("emails", "reports")
    assert prod.settings.alert_channel == "C0SHARED"
    assert billing.settings.backlog_threshold == 100
    assert billing.settings.alert_channel == "C0BILLING"
    assert billing.settings.stuck_after == 60.0
    assert prod.settings.stuck_after == 600.0


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("CHATOPS_CLUSTER_GAMMA_QUEUES", "a", "not a cluster setting (clusters: alpha, beta;"),
        ("CHATOPS_CLUSTER_ALPHA_SLACK_BOT_TOKEN", "xoxb-1", "not a cluster setting"),
        ("CHATOPS_CLUSTER_ALPHA_BACKLOG_THRESHOLD", "lots", "cluster 'alpha': CHATOPS_CLUSTER_"),
        ("CHATOPS_CLUSTER_BETA_ALERT_CHANNEL", "#ops", "cluster 'beta': "),
    ],
)
def test_bad_per_cluster_keys_are_refused(key: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CHATOPS_CLUSTERS": f"alpha={REDIS},beta={AMQP}", key: value})
    assert expected in str(caught.value)
    assert "xoxb-1" not in str(caught.value)


def test_per_cluster_keys_with_dashes_and_underscores_in_names_are_not_confused() -> None:
    clusters = clusters_of(
        {
            "CHATOPS_CLUSTERS": f"eu={REDIS},eu-west={AMQP}",
            "CHATOPS_CLUSTER_EU_WEST_QUEUES": "w",
            "CHATOPS_CLUSTER_EU_QUEUES": "e",
        }
    )
    assert [c.settings.queues for c in clusters] == [("e",), ("w",)]
    assert env_name("eu-west") == "EU_WEST"


def test_the_config_file_holds_clusters_and_per_cluster_keys(tmp_path: Path) -> None:
    config = tmp_path / "chatops.env"
    config.write_text(
        "\n".join(
            [
                f"CHATOPS_CLUSTERS=alpha={REDIS},beta={AMQP}",
                "CHATOPS_CHANNEL_CLUSTERS=C0ALPHA=alpha",
                "CHATOPS_CLUSTER_BETA_FAILURE_SPIKE_THRESHOLD=3",
            ]
        )
    )
    clusters = clusters_of({}, config)
    assert clusters.names == ("alpha", "beta")
    assert clusters.clusters[1].settings.failure_spike_threshold == 3
    assert clusters.default_for("C0ALPHA") == "alpha"
    # The environment wins over the file, key by key.
    overridden = clusters_of({"CHATOPS_CLUSTER_BETA_FAILURE_SPIKE_THRESHOLD": "7"}, config)
    assert overridden.clusters[1].settings.failure_spike_threshold == 7


def test_describe_never_shows_a_cluster_broker_password() -> None:
    settings = load_settings({"CHATOPS_CLUSTERS": f"alpha={REDIS},billing={AMQP}"})
    shown = settings.describe()["CHATOPS_CLUSTERS"]
    assert "s3cret" not in shown and "s3cret" not in repr(settings)
    assert shown == f"alpha={REDIS},billing=amqp://guest:***@127.0.0.1:5672//"


def test_a_broker_is_required_unless_clusters_name_them() -> None:
    with pytest.raises(ConfigError, match="CELERY_BROKER_URL: required"):
        load_settings({}).require_broker()
    load_settings({"CHATOPS_CLUSTERS": f"alpha={REDIS}"}).require_broker()
