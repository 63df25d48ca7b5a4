# netreap.cilium reaper as a Nomad periodic batch job: ansible-playbook netreap.cilium.reap
# every 10 minutes from the execution environment image (extras/awx/execution-environment.yml).
#
#   nomad var put nomad/jobs/netreap-reaper consul_token=... nomad_token=... \
#     etcd_endpoints=https://etcd-1:2379,https://etcd-2:2379 etcd_username=netreap etcd_password=... \
#     etcd_ca_cert=@etcd-ca.pem ssh_private_key=@id_ed25519 ssh_known_hosts=@known_hosts
#   nomad job run extras/nomad/netreap-reaper.nomad.hcl
#
# Nomad Variable keys are the input IDs of the AWX credential type (extras/awx/): etcd_endpoints,
# etcd_username, etcd_password, etcd_ca_cert, etcd_client_cert, etcd_client_key, consul_address,
# consul_token, consul_ca_cert, consul_client_cert, consul_client_key, consul_tls_server_name,
# nomad_address, nomad_token, nomad_region, nomad_ca_cert, nomad_client_cert, nomad_client_key,
# nomad_tls_server_name; set the ones your cluster needs, plus ssh_private_key and ssh_known_hosts.
# TLS material and tokens serve this container (the inventory, the heartbeat and the GC run here);
# the node duties use the Nomad and Consul agents of each node and the files on it.
# The nodes are reached over SSH as `netreap` (ANSIBLE_REMOTE_USER), which needs passwordless
# sudo there: the node duties use become (docs/scheduling.md).
# prohibit_overlap: Nomad does not launch a run while the previous one is still going.
# `crons` needs Nomad 1.6 or newer; with Nomad 1.5 write `cron = "*/10 * * * *"` instead.
# Secrets come from Nomad Variables at nomad/jobs/netreap-reaper (readable by this job's tasks
# without any ACL policy); with Vault, swap `nomadVar "..."` for `secret "kv/data/netreap"` and
# the keys for `.Data.data.<key>`, and add a vault {} block to the task.
# Files in secrets/ belong to UID/GID 1000, the user of the execution environment image
# (options.user in extras/awx/execution-environment.yml): ssh refuses a key it cannot read or
# that others can. The Nomad client must run as root to set the owner.
# The heartbeat runs every minute in its own job: netreap-heartbeat.nomad.hcl.

job "netreap-reaper" {
  type        = "batch"
  datacenters = ["*"]

  periodic {
    crons            = ["*/10 * * * *"]
    prohibit_overlap = true
    time_zone        = "UTC"
  }

  group "reaper" {
    count = 1

    # A failed run is not retried at once: the next periodic run comes in 10 minutes.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "reap" {
      driver = "docker"

      config {
        image   = "registry.example.com/netreap/netreap-cilium-ee:0.1.0"
        command = "ansible-playbook"
        args    = ["--inventory", "/local/inventory", "netreap.cilium.reap"]
      }

      env {
        ANSIBLE_PRIVATE_KEY_FILE    = "/secrets/id_ed25519"
        ANSIBLE_SSH_COMMON_ARGS     = "-o UserKnownHostsFile=/secrets/known_hosts"
        ANSIBLE_REMOTE_USER         = "netreap"
        ANSIBLE_NOCOLOR             = "1"
        ANSIBLE_RETRY_FILES_ENABLED = "0"
        # Nomad unreachable or the token refused: fail the run, do not reap an empty inventory.
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
        {{- with nomadVar "nomad/jobs/netreap-reaper" }}
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
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .etcd_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/etcd-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .etcd_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/etcd-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .etcd_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-ca.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .consul_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .consul_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/consul-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .consul_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-ca.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .nomad_ca_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-client.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .nomad_client_cert }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/nomad-client-key.pem"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .nomad_client_key }}{{ . }}{{ end }}{{ end }}"
      }

      # The SSH key and known hosts for the nodes.
      template {
        destination = "secrets/id_ed25519"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .ssh_private_key }}{{ . }}{{ end }}{{ end }}"
      }

      template {
        destination = "secrets/known_hosts"
        perms       = "0600"
        uid         = 1000
        gid         = 1000
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ with .ssh_known_hosts }}{{ . }}{{ end }}{{ end }}"
      }

      # Hosts: every ready Nomad client with the cilium-cni fingerprint (netreap.cilium.nomad).
      template {
        destination = "local/inventory/netreap.nomad.yml"
        change_mode = "noop"
        data        = "plugin: netreap.cilium.nomad\n"
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
        cpu    = 500
        memory = 512
      }

      kill_timeout = "30s"
    }
  }
}
