# connmon container image. docker-compose.yml runs it with Prometheus, Alertmanager and Grafana.
#
# It runs as the unprivileged user connmon (uid 10001) and sends ICMP without root, in one of two ways:
#   unprivileged ICMP (preferred, no capability at all): the container's net.ipv4.ping_group_range must
#     include gid 10001; Docker sets "0 2147483647" by default, compose sets it explicitly:
#       docker run --sysctl net.ipv4.ping_group_range="0 2147483647" --cap-drop ALL connmon
#   raw ICMP with only CAP_NET_RAW: the binary below has no file capability, so give the process
#     the ambient capability through your runtime (Kubernetes: capabilities.add [NET_RAW] with
#     --icmp-mode raw), or use the sysctl.
# The same image runs a site agent (docs/agents.md):
#   docker run … connmon agent --config /etc/connmon-agent/agent.yaml --icmp-mode unprivileged
#   with state_dir: /var/lib/connmon in agent.yaml (the volume below, owned by the image's user).
FROM python:3.11-slim-bookworm

# iperf3 for throughput tests (the client; sites run iperf3 -s). noninteractive: its package asks
# whether to start an iperf3 server at boot, which a monitor never wants.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iperf3 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 connmon \
 && useradd --system --uid 10001 --gid connmon --no-create-home --home-dir /var/lib/connmon \
      --shell /usr/sbin/nologin connmon

WORKDIR /opt/connmon
COPY pyproject.toml README.md ./
COPY monitor ./monitor
# the centre: connmon with its centre extra (issue 18; the agent alone is `pip install .`)
RUN pip install --no-cache-dir ".[centre]" && rm -rf /root/.cache

# The loopback-only example as the default site list: replace it by mounting your own file at
# /etc/connmon/sites.yaml (compose does). The state directory holds the history store (issue 5).
COPY config/example.yaml /etc/connmon/sites.yaml
COPY config/web-config.example.yml /etc/connmon/web-config.example.yml
RUN install -d -o connmon -g connmon -m 0750 /var/lib/connmon
VOLUME ["/var/lib/connmon"]
# the history (connmon run) and where `docker exec … connmon report` finds it
ENV CONNMON_STATE_DIR=/var/lib/connmon

USER connmon
EXPOSE 9077
# Without TLS on the port; with --web.config.file use an https URL and the password instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9077/-/healthy', timeout=3)"]
ENTRYPOINT ["connmon"]
CMD ["run", "--config", "/etc/connmon/sites.yaml", "--listen", ":9077", "--state-dir", "/var/lib/connmon"]
