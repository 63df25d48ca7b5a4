"""A throw-away certificate authority for the lab, made at run time (``cryptography`` package).

``LabCA(directory)`` writes ``ca.pem``/``ca-key.pem`` and issues PEM certificates on demand:
``server(name, hosts)`` for listeners (IP and DNS SANs), ``client(name)`` for mutual TLS.
``Lab(tls=True|"mtls")`` uses one CA and one server certificate for Consul, Nomad, the Nomad
client agents and the real etcd; ``server_context()`` and ``client_context()`` turn the files into
``ssl.SSLContext`` objects for the lab's own listeners and writers.  Test infrastructure: never
imported by product code.
"""

import datetime
import ipaddress
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The names the lab's server certificate carries besides 127.0.0.1/localhost: what real
# clusters use (Consul's and Nomad's built-in CAs issue server.<dc>.consul / server.<region>.nomad;
# docs/upstream.md#consul-http, docs/upstream.md#nomad-http).  "etcd.lab" is the lab's own name.
SERVER_NAMES = ("localhost", "server.dc1.consul", "server.global.nomad", "etcd.lab")
SERVER_IPS = ("127.0.0.1",)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netreap.cilium lab"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _write(path, data, mode=0o644):
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def _key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CertFiles:
    """Paths of one issued certificate: ``cert``, ``key`` (and the issuing ``ca``)."""

    def __init__(self, cert, key, ca):
        self.cert = cert
        self.key = key
        self.ca = ca


class LabCA:
    def __init__(self, directory, name="netreap lab CA"):
        self.directory = os.path.abspath(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.name = name
        self._key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self._subject = _name(name)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(self._subject).issuer_name(self._subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._key.public_key()),
                           critical=False)
            .sign(self._key, hashes.SHA256()))
        self.ca = _write(os.path.join(self.directory, "ca.pem"),
                         self._cert.public_bytes(serialization.Encoding.PEM))
        _write(os.path.join(self.directory, "ca-key.pem"), _key_pem(self._key), 0o600)

    def _issue(self, stem, common_name, sans, usage):
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self._subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return CertFiles(
            _write(os.path.join(self.directory, stem + ".pem"),
                   cert.public_bytes(serialization.Encoding.PEM)),
            _write(os.path.join(self.directory, stem + "-key.pem"), _key_pem(key), 0o600),
            self.ca)

    def server(self, stem="server", names=SERVER_NAMES, ips=SERVER_IPS):
        """A server certificate whose SANs are exactly ``names`` (DNS) and ``ips``."""
        sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address(i))
                                                   for i in ips]
        # etcd also uses its server certificate as a client (its gRPC gateway dials itself).
        return self._issue(stem, (list(names) + list(ips))[0], sans,
                           [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])

    def client(self, stem="client", common_name="netreap reaper"):
        return self._issue(stem, common_name, [], [ExtendedKeyUsageOID.CLIENT_AUTH])


def server_context(certs, require_client_cert=False):
    """An SSLContext for a lab listener; with ``require_client_cert`` a client certificate signed
    by ``certs.ca`` is mandatory (mutual TLS)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs.cert, certs.key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=certs.ca)
    return ctx


def client_context(ca_file, cert=None, key=None):
    """An SSLContext for the lab's own clients (kvstore writer, etcd proxy, health checks)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
