// Certificates made at run time for the TLS tests: a throwaway CA (EC P-256) with a server
// certificate for localhost, 127.0.0.1 and ::1 and a client certificate, as PEM files in a
// temporary directory removed at exit. Needs EDGESPLIT_HAS_TLS (OpenSSL).
#pragma once

#include <catch2/catch.hpp>

#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <memory>
#include <string>
#include <system_error>
#include <utility>

#include "edgesplit/transport/tls.hpp"

namespace edgesplit_test {

namespace tls_fixture_detail {
namespace fs = std::filesystem;
using namespace edgesplit;

inline void require_ssl(bool ok, const char* what) {
  if (!ok) FAIL(what << ": " << detail::tls::error_text());
}

struct KeyFree {
  void operator()(EVP_PKEY* k) const noexcept { EVP_PKEY_free(k); }
};
struct CertFree {
  void operator()(X509* x) const noexcept { X509_free(x); }
};
using Key = std::unique_ptr<EVP_PKEY, KeyFree>;
using Cert = std::unique_ptr<X509, CertFree>;

inline Key p256_key() {
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, nullptr);
  require_ssl(ctx != nullptr, "EVP_PKEY_CTX_new_id");
  EVP_PKEY* key = nullptr;
  const bool ok = EVP_PKEY_keygen_init(ctx) == 1 &&
                  EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1) == 1 &&
                  EVP_PKEY_keygen(ctx, &key) == 1;
  EVP_PKEY_CTX_free(ctx);
  require_ssl(ok, "EC P-256 key generation");
  return Key(key);
}

/// A certificate for `key`, subject "CN=<cn>,O=edgesplit test", signed by `issuer` with
/// `issuer_key` (self-signed when they are null), with X.509v3 extensions in openssl.cnf syntax.
inline Cert make_cert(EVP_PKEY* key, const std::string& cn, X509* issuer, EVP_PKEY* issuer_key, long serial,
               std::initializer_list<std::pair<int, const char*>> extensions) {
  Cert x(X509_new());
  require_ssl(x != nullptr, "X509_new");
  X509_set_version(x.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), serial);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 7 * 86400);
  X509_set_pubkey(x.get(), key);
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("edgesplit test"), -1, -1, 0);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), issuer != nullptr ? X509_get_subject_name(issuer) : name);
  X509V3_CTX v3;
  X509V3_set_ctx_nodb(&v3);
  X509V3_set_ctx(&v3, issuer != nullptr ? issuer : x.get(), x.get(), nullptr, nullptr, 0);
  for (const auto& [nid, value] : extensions) {
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
    require_ssl(ext != nullptr, value);
    X509_add_ext(x.get(), ext, -1);
    X509_EXTENSION_free(ext);
  }
  require_ssl(X509_sign(x.get(), issuer_key != nullptr ? issuer_key : key, EVP_sha256()) > 0, "X509_sign");
  return x;
}

inline void write_cert(const fs::path& path, X509* cert) {
  BIO* b = BIO_new_file(path.c_str(), "w");
  require_ssl(b != nullptr, "BIO_new_file");
  const bool ok = PEM_write_bio_X509(b, cert) == 1;
  BIO_free(b);
  require_ssl(ok, "PEM_write_bio_X509");
}

inline void write_key(const fs::path& path, EVP_PKEY* key) {
  BIO* b = BIO_new_file(path.c_str(), "w");
  require_ssl(b != nullptr, "BIO_new_file");
  ::chmod(path.c_str(), 0600);
  const bool ok = PEM_write_bio_PrivateKey(b, key, nullptr, nullptr, 0, nullptr, nullptr) == 1;
  BIO_free(b);
  require_ssl(ok, "PEM_write_bio_PrivateKey");
}

/// A throwaway CA, a server certificate for localhost, 127.0.0.1 and ::1 ("CN=localhost") and a
/// client certificate ("CN=edge-1"), as PEM files in a temporary directory removed at exit.
struct Pki {
  fs::path dir, ca, server_cert, server_key, client_cert, client_key;

  explicit Pki(const std::string& tag) {
    dir = fs::temp_directory_path() / ("edgesplit-tls-" + std::to_string(::getpid()) + "-" + tag);
    fs::remove_all(dir);
    fs::create_directories(dir);
    fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace);
    ca = dir / "ca.pem";
    server_cert = dir / "server.pem";
    server_key = dir / "server.key";
    client_cert = dir / "client.pem";
    client_key = dir / "client.key";

    const Key ca_key = p256_key();
    const Cert ca_cert = make_cert(ca_key.get(), tag + " CA", nullptr, nullptr, 1,
                                   {{NID_basic_constraints, "critical,CA:TRUE"},
                                    {NID_key_usage, "critical,keyCertSign,cRLSign"},
                                    {NID_subject_key_identifier, "hash"}});
    const Key skey = p256_key();
    const Cert scert = make_cert(skey.get(), "localhost", ca_cert.get(), ca_key.get(), 2,
                                 {{NID_basic_constraints, "critical,CA:FALSE"},
                                  {NID_key_usage, "critical,digitalSignature"},
                                  {NID_ext_key_usage, "serverAuth"},
                                  {NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1"},
                                  {NID_subject_key_identifier, "hash"},
                                  {NID_authority_key_identifier, "keyid:always"}});
    const Key ckey = p256_key();
    const Cert ccert = make_cert(ckey.get(), "edge-1", ca_cert.get(), ca_key.get(), 3,
                                 {{NID_basic_constraints, "critical,CA:FALSE"},
                                  {NID_key_usage, "critical,digitalSignature"},
                                  {NID_ext_key_usage, "clientAuth"},
                                  {NID_subject_key_identifier, "hash"},
                                  {NID_authority_key_identifier, "keyid:always"}});
    write_cert(ca, ca_cert.get());
    write_cert(server_cert, scert.get());
    write_key(server_key, skey.get());
    write_cert(client_cert, ccert.get());
    write_key(client_key, ckey.get());
  }
  Pki(const Pki&) = delete;
  Pki& operator=(const Pki&) = delete;
  ~Pki() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }

  /// A server's options: its certificate; with `mutual`, clients must present one of this CA.
  TlsOptions server(bool mutual = true) const {
    TlsOptions o;
    o.certificate_file = server_cert;
    o.private_key_file = server_key;
    o.ca_file = ca;
    o.require_client_certificate = mutual;
    return o;
  }
  /// A client's options: trusts this CA; presents the client certificate when `with_certificate`.
  TlsOptions client(bool with_certificate = true) const {
    TlsOptions o;
    o.ca_file = ca;
    if (with_certificate) {
      o.certificate_file = client_cert;
      o.private_key_file = client_key;
    }
    return o;
  }
};

inline const Pki& pki() {
  static const Pki p("main");
  return p;
}
inline const Pki& other_pki() {
  static const Pki p("other");
  return p;
}

}  // namespace tls_fixture_detail

using tls_fixture_detail::other_pki;
using tls_fixture_detail::Pki;
using tls_fixture_detail::pki;

}  // namespace edgesplit_test
