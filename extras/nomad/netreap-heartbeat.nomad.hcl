# netreap.cilium kvstore heartbeat as a Nomad periodic batch job: every minute, only the
# heartbeat of netreap.cilium.reap (--tags netreap_heartbeat), in this container (group `reaper`).
# It reaches no node and does not ask Nomad for the inventory, so a slow or unreachable Nomad API
# does not delay it. Cilium agents on etcd need it (docs/scheduling.md says which releases).
#
#   nomad var put nomad/jobs/netreap-heartbeat etcd_endpoints=https://etcd-1:2379,https://etcd-2:2379 \
#     etcd_username=netreap etcd_password=... etcd_ca_cert=@etcd-ca.pem
#   nomad job run extras/nomad/netreap-heartbeat.nomad.hcl
#
# Nomad Variable keys are the input IDs of the AWX credential type (extras/awx/): etcd_endpoints,
# etcd_username, etcd_password, etcd_ca_cert, etcd_client_cert, etcd_client_key, consul_address,
# consul_token, consul_ca_cert, consul_client_cert, consul_client_key, consul_tls_server_name,
# nomad_address, nomad_token, nomad_region, nomad_ca_cert, nomad_client_cert, nomad_client_key,
# nomad_tls_server_name; set the ones your cluster needs (with Consul as kvstore: consul_*).
# prohibit_overlap: Nomad does not launch a run while the previous one is still going.
# `crons` needs Nomad 1.6 or newer; with Nomad 1.5 write `cron = "* * * * *"` instead.
# Secrets come from Nomad Variables at nomad/jobs/netreap-heartbeat (readable by this job's tasks
# without any ACL policy); with Vault, swap `nomadVar "..."` for `secret "kv/data/netreap"` and
# the keys for `.Data.data.<key>`, and add a vault {} block to the task.
# Files in secrets/ belong to UID/GID 1000, the user of the execution environment image
# (options.user in extras/awx/execution-environment.yml); the Nomad client must run as root to
# set the owner.
# The full reap runs in its own job: netreap-reaper.nomad.hcl (same image and variables).

job "netreap-heartbeat" {
  type        = "batch"
  datacenters = ["*"]

  periodic {
    crons            = ["* * * * *"]
    prohibit_overlap = true
    time_zone        = "UTC"
  }

  group "heartbeat" {
    count = 1

    # A failed run is not retried: the next periodic run comes within a minute.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "heartbeat" {
      driver = "docker"

      config {
        image   = "registry.example.com/netreap/netreap-cilium-ee:0.1.0"
        command = "ansible-playbook"
        args    = ["--inventory", "/local/inventory", "--tags", "netreap_heartbeat", "netreap.cilium.reap"]
      }

      env {
        ANSIBLE_NOCOLOR             = "1"
        ANSIBLE_RETRY_FILES_ENABLED = "0"
        # An inventory source that fails to parse fails the run.
        ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED = "1"
      }

      # Addresses, tokens and etcd settings: rendered into the task's secrets directory and
      # exported to the environment of ansible-playbook (the heartbeat and the GC run here and
      # read ETCDCTL_*, CONSUL_* and NOMAD_* like etcdctl and the Consul and Nomad CLIs do).
      template {
        destination = "secrets/netreap.env"
        env         = true
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/netreap-heartbeat" }}
        # Addresses: the Nomad and Consul agents of the node this run landed on, unless set.
        NOMAD_ADDR={{ with .nomad_address }}{{ . }}{{ else }}http://{{ env "attr.unique.network.ip-address" }}:4646{{ end }}
        CONSUL_HTTP_ADDR={{ with .consul_address }}{{ . }}{{ else }}http://{{ env "attr.unique.network.ip-address" }}:8500{{ end }}
        {{ with .nomad_region }}NOMAD_REGION={{ . }}{{ end }}
        {{ with .nomad_tls_server_name }}NOMAD_TLS_SERVER_NAME={{ . }}{{ end }}
        {{ with .consul_tls_server_name }}CONSUL_TLS_SERVER_NAME={{ . }}{{ end }}
        {{ with .etcd_endpoints }}ETCDCTL_ENDPOINTS={{ . }}{{ end }}
        {{ with .etcd_username }}ETCDCTL_USER={{ . }}{{ end }}
        {{ with .consul_token }}CONSUL_HTTP_TOKEN={{ . }}{{ end }}
        {{ with .nomad_token }}NOMAD_TOKEN={{ . }}{{ end }}
        {{ with .etcd_password }}ETCDCTL_PASSWORD={{ . }}{{ end }}
        # TLS files (rendered below) only when the variable holds them.
        {{ with .etcd_ca_cert }}ETCDCTL_CACERT=/secrets/etcd-ca.pem{{ end }}
        {{ with .etcd_client_cert }}ETCDCTL_CERT=/secrets/etcd-client.pem{{ end }}
        {{ with .etcd_client_key }}ETCDCTL_KEY=/secrets/etcd-client-key.pem{{ end }}
        {{ with .consul_ca_cert }}CONSUL_CACERT=/secrets/consul-ca.pem{{ end }}
        {{ with .consul_client_cert }}CONSUL_CLIENT_CERT=/secrets/consul-client.pem{{ end }}
        {{ with .consul_client_key }}CONSUL_CLIENT_KEY=/secrets/consul-client-key.pem{{ end }}
        {{ with .nomad_ca_cert }}NOMAD_CACERT=/secrets/nomad-ca.pem{{ end }}
        {{ with .nomad_client_cert }}NOMAD_CLIENT_CERT=/secrets/nomad-client.pem{{ end }}
        {{ with .nomad_client_key }}NOMAD_CLIENT_KEY=/secrets/nomad-client-key.pem{{ end }}
        {{- end }}
        EOT
      }

      template {
        destination = "secrets/etcd-ca.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .etcd_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/etcd-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .etcd_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/etcd-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .etcd_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-ca.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .consul_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .consul_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .consul_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-ca.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .nomad_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .nomad_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-heartbeat\" }}{{ with .nomad_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      # The controller group: the once-per-run steps (heartbeat, GC) run in this container.
      # (No {{ }} here: Nomad renders templates itself; the path is the image's Python.)
      template {
        destination = "local/inventory/reaper.yml"
        change_mode = "noop"
        data        = <<-EOT
        reaper:
          hosts:
            localhost:
              ansible_connection: local
              ansible_python_interpreter: /usr/bin/python3.11
        EOT
      }

      resources {
        cpu    = 200
        memory = 384
      }

      kill_timeout = "10s"
    }
  }
}
