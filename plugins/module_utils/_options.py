# -*- coding: utf-8 -*-
# Copyright: netreap.cilium contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Internal to netreap.cilium (not a public API): the connection options of every service, as data.

One table per service (``CONSUL``, ``NOMAD``, ``CILIUM``, ``ETCD``) gives each option its type,
environment variables, default and ``no_log``.  From it come the modules' argument spec
(``Service.argument_spec()``) and the resolution of the values (``resolve``), which works
without AnsibleModule, so inventory plugins and event sources resolve options exactly as the
modules do::

    import os
    from ansible_collections.netreap.cilium.plugins.module_utils._options import NOMAD, resolve

    values = resolve(NOMAD, {"nomad_address": "https://nomad.example:4646"}, os.environ)
    values["nomad_address"]         # 'https://nomad.example:4646' (the option wins)
    values["nomad_token"]           # NOMAD_TOKEN, or None
    values["nomad_validate_certs"]  # False only if NOMAD_SKIP_VERIFY is true
    values["nomad_timeout"]         # 10.0, the default

The order is: the option (``None`` is unset), the token file (for a token that has one, read
from the file option or its variable), the etcd client file (``config``), the environment
(an empty variable is unset), the default.  The doc fragments in ``plugins/doc_fragments`` stay
static text for ansible-doc; ``tests/unit/plugins/doc_fragments`` checks them against these
tables.  No network I/O here; the only file read is a token file.
"""

from __future__ import annotations

from ansible.module_utils.common.text.converters import to_text


def parse_bool(value):
    """Go's strconv.ParseBool, which the HashiCorp CLIs use for their environment variables."""
    if isinstance(value, bool):
        return value
    text = to_text(value).strip()
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise ValueError("%r is not a boolean (use true/false, 1/0)" % value)


def read_token_file(path, service="Consul"):
    """The trimmed content of a token file, or ValueError naming the file."""
    try:
        with open(path, "r") as handle:
            return handle.read().strip()
    except (IOError, OSError) as exc:
        raise ValueError("cannot read %s token file %s: %s" % (service, path, exc))


def user_part(raw):
    """``user`` of ``user:password`` (etcdctl's ETCDCTL_USER)."""
    return raw.split(":", 1)[0]


def password_part(raw):
    """``password`` of ``user:password``, or None when there is no password part."""
    return raw.split(":", 1)[1] or None if ":" in raw else None


class Option:
    """One connection option.

    ``env``: the environment variables, tried in order; an entry is a name, or a pair
    ``(name, function)`` whose function turns the raw text into the value (None: try the next).
    ``inverted``: the environment and config file say the opposite of this bool option
    (``NOMAD_SKIP_VERIFY`` for ``nomad_validate_certs``).  ``token_file``: the option naming a
    file whose content is this option's value.  ``config_key``: the key in the etcd client file.
    ``default_text``: how the doc fragment states the default.
    """

    def __init__(self, name, type, env=(), default=None, no_log=None, elements=None, token_file=None,
                 config_key=None, inverted=False, default_text=None):
        self.name = name
        self.type = type
        self.env = tuple((e, None) if isinstance(e, str) else e for e in env)
        self.default = default
        self.no_log = no_log
        self.elements = elements
        self.token_file = token_file
        self.config_key = config_key
        self.inverted = inverted
        self.default_text = default_text

    @property
    def env_names(self):
        return [name for name, _convert in self.env]

    def spec(self):
        """This option's entry in an AnsibleModule argument spec (no default: the environment
        comes before it, so ``resolve`` applies it)."""
        spec = dict(type=self.type)
        if self.elements:
            spec["elements"] = self.elements
        if self.no_log is not None:
            spec["no_log"] = self.no_log
        return spec

    def convert(self, raw):
        """Text from the environment or a config file, as this option's type."""
        if self.type == "bool":
            value = parse_bool(raw)
            return not value if self.inverted else value
        if self.type == "float":
            return float(raw)
        if self.type == "int":
            return int(raw)
        if self.type == "list":
            items = raw if isinstance(raw, list) else to_text(raw).split(",")
            return [to_text(item).strip() for item in items if to_text(item).strip()] or None
        return raw


class Service:
    """The connection options of one service, in documentation order."""

    def __init__(self, name, options):
        self.name = name
        self.options = tuple(options)

    def __iter__(self):
        return iter(self.options)

    def option(self, name):
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    @property
    def names(self):
        return [option.name for option in self.options]

    def argument_spec(self):
        return dict((option.name, option.spec()) for option in self.options)


CONSUL = Service("Consul", [
    Option("consul_address", "str", env=["CONSUL_HTTP_ADDR"], default="127.0.0.1:8500"),
    Option("consul_token", "str", env=["CONSUL_HTTP_TOKEN"], no_log=True, token_file="consul_token_file"),
    Option("consul_token_file", "path", env=["CONSUL_HTTP_TOKEN_FILE"]),
    Option("consul_use_ssl", "bool", env=["CONSUL_HTTP_SSL"]),
    Option("consul_validate_certs", "bool", env=["CONSUL_HTTP_SSL_VERIFY"], default=True,
           default_text="Verification is on unless this is V(false)"),
    Option("consul_ca_cert", "path", env=["CONSUL_CACERT"]),
    Option("consul_ca_path", "path", env=["CONSUL_CAPATH"]),
    Option("consul_client_cert", "path", env=["CONSUL_CLIENT_CERT"]),
    Option("consul_client_key", "path", env=["CONSUL_CLIENT_KEY"], no_log=False),
    Option("consul_tls_server_name", "str", env=["CONSUL_TLS_SERVER_NAME"]),
    Option("consul_datacenter", "str"),
    Option("consul_timeout", "float", default=10.0, default_text="Defaults to 10"),
])

NOMAD = Service("Nomad", [
    Option("nomad_address", "str", env=["NOMAD_ADDR"], default="http://127.0.0.1:4646"),
    Option("nomad_token", "str", env=["NOMAD_TOKEN"], no_log=True),
    Option("nomad_region", "str", env=["NOMAD_REGION"]),
    Option("nomad_namespace", "str", env=["NOMAD_NAMESPACE"]),
    # NOMAD_SKIP_VERIFY=true means "do not verify": the inverse of the option.
    Option("nomad_validate_certs", "bool", env=["NOMAD_SKIP_VERIFY"], default=True, inverted=True,
           default_text="Verification is on unless this is V(false)"),
    Option("nomad_ca_cert", "path", env=["NOMAD_CACERT"]),
    Option("nomad_ca_path", "path", env=["NOMAD_CAPATH"]),
    Option("nomad_client_cert", "path", env=["NOMAD_CLIENT_CERT"]),
    Option("nomad_client_key", "path", env=["NOMAD_CLIENT_KEY"], no_log=False),
    Option("nomad_tls_server_name", "str", env=["NOMAD_TLS_SERVER_NAME"]),
    Option("nomad_timeout", "float", default=10.0, default_text="Defaults to 10"),
])

CILIUM = Service("Cilium", [
    Option("cilium_socket", "path", env=["CILIUM_SOCK"], default="/var/run/cilium/cilium.sock"),
    Option("cilium_timeout", "float", default=30.0, default_text="Defaults to 30"),
])

ETCD = Service("etcd", [
    Option("etcd_endpoints", "list", elements="str", env=["ETCDCTL_ENDPOINTS"], config_key="endpoints",
           default=["http://127.0.0.1:2379"]),
    Option("etcd_config", "path"),
    Option("etcd_ca_cert", "path", env=["ETCDCTL_CACERT"], config_key="trusted-ca-file"),
    Option("etcd_client_cert", "path", env=["ETCDCTL_CERT"], config_key="cert-file"),
    Option("etcd_client_key", "path", env=["ETCDCTL_KEY"], config_key="key-file", no_log=False),
    Option("etcd_username", "str", env=[("ETCDCTL_USER", user_part)], config_key="username"),
    Option("etcd_password", "str", env=[("ETCDCTL_USER", password_part), "ETCDCTL_PASSWORD"],
           config_key="password", no_log=True),
    Option("etcd_validate_certs", "bool", env=["ETCDCTL_INSECURE_SKIP_TLS_VERIFY"], default=True,
           config_key="insecure-skip-tls-verify", inverted=True,
           default_text="Verification is on unless this is V(false)"),
    Option("etcd_tls_server_name", "str"),
    Option("etcd_timeout", "float", default=10.0, default_text="Defaults to 10"),
])

SERVICES = (CONSUL, NOMAD, CILIUM, ETCD)


def _from_env(option, env):
    for name, convert in option.env:
        raw = env.get(name)
        if raw is None or raw == "":
            continue
        try:
            value = convert(raw) if convert else option.convert(raw)
        except ValueError as exc:
            raise ValueError("environment variable %s: %s" % (name, to_text(exc)))
        if value is not None:
            return value, name
    return None, None


def resolve(service, options, env, config=None, read_file=read_token_file, sources=None):
    """The value of every option of ``service``: option, token file, config, environment, default.

    ``options``: the task's or plugin's options (a dict; missing or None means unset).
    ``env``: the environment (``os.environ`` or a dict).  ``config``: the parsed etcd client
    file, if any.  ``sources``, if a dict, receives where each value came from (``option``,
    ``token_file``, ``config``, ``env:<NAME>`` or ``default``).  Raises ValueError naming the
    variable or file that holds a bad value.
    """
    config = config or {}
    values = {}
    sources = {} if sources is None else sources
    for option in service:
        value = options.get(option.name)
        source = "option"
        if value is None and option.token_file:
            path = options.get(option.token_file)
            if path is None:
                path, _name = _from_env(service.option(option.token_file), env)
            if path:
                value, source = read_file(path, service.name), "token_file"
        if value is None and option.config_key and config.get(option.config_key) not in (None, "", []):
            value, source = option.convert(config[option.config_key]), "config"
        if value is None:
            value, name = _from_env(option, env)
            source = "env:%s" % name
        if value is None:
            value, source = option.default, "default"
            if isinstance(value, list):
                value = list(value)
        values[option.name] = value
        sources[option.name] = source
    return values


def argument_spec(*services):
    """The argument spec of the options of ``services`` together."""
    spec = {}
    for service in services:
        spec.update(service.argument_spec())
    return spec


__all__ = ["CILIUM", "CONSUL", "ETCD", "NOMAD", "SERVICES", "Option", "Service", "argument_spec",
           "parse_bool", "read_token_file", "resolve"]
