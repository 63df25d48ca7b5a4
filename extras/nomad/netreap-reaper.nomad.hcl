# netreap.cilium reaper as a Nomad periodic batch job: ansible-playbook netreap.cilium.reap
# every 10 minutes from the execution environment image (extras/awx/execution-environment.yml).
#
#   nomad var put nomad/jobs/netreap-reaper consul_token=... nomad_token=... \
#     etcd_password=... ssh_private_key=@id_ed25519 ssh_known_hosts=@known_hosts
#   nomad job run extras/nomad/netreap-reaper.nomad.hcl
#
# prohibit_overlap: Nomad does not launch a run while the previous one is still going.
# `crons` needs Nomad 1.6 or newer; with Nomad 1.5 write `cron = "*/10 * * * *"` instead.
# Secrets come from Nomad Variables at nomad/jobs/netreap-reaper (readable by this job's tasks
# without any ACL policy); with Vault, swap the template below for the commented one.
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
        # The Nomad client agent of the node this run lands on (it forwards to the servers).
        NOMAD_ADDR                               = "http://${attr.unique.network.ip-address}:4646"
        CONSUL_HTTP_ADDR                         = "http://${attr.unique.network.ip-address}:8500"
        ANSIBLE_PRIVATE_KEY_FILE                 = "/secrets/id_ed25519"
        ANSIBLE_SSH_COMMON_ARGS                  = "-o UserKnownHostsFile=/secrets/known_hosts"
        ANSIBLE_REMOTE_USER                      = "netreap"
        ANSIBLE_NOCOLOR                          = "1"
        ANSIBLE_RETRY_FILES_ENABLED              = "0"
        # Nomad unreachable or the token refused: fail the run, do not reap an empty inventory.
        ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED = "1"
      }

      # Tokens: rendered into the task's secrets directory and exported to the environment.
      template {
        destination = "secrets/netreap.env"
        env         = true
        change_mode = "noop"
        data        = <<-EOT
        {{- with nomadVar "nomad/jobs/netreap-reaper" }}
        CONSUL_HTTP_TOKEN={{ .consul_token }}
        NOMAD_TOKEN={{ .nomad_token }}
        ETCDCTL_PASSWORD={{ .etcd_password }}
        {{- end }}
        EOT
      }

      # With Vault instead of Nomad Variables (add a vault {} block to the task):
      #   {{- with secret "kv/data/netreap" }}
      #   CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}
      #   NOMAD_TOKEN={{ .Data.data.nomad_token }}
      #   ETCDCTL_PASSWORD={{ .Data.data.etcd_password }}
      #   {{- end }}

      template {
        destination = "secrets/id_ed25519"
        perms       = "0600"
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ .ssh_private_key }}{{ end }}"
      }

      template {
        destination = "secrets/known_hosts"
        change_mode = "noop"
        data        = "{{ with nomadVar \"nomad/jobs/netreap-reaper\" }}{{ .ssh_known_hosts }}{{ end }}"
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
