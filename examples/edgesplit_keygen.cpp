// edgesplit_keygen: CURVE key pairs for a ZeroMQ cluster (docs/deployment.md).
//
//   edgesplit_keygen --out DIR NAME [NAME...]
//
// Writes DIR/NAME.key (public and secret key, mode 0600: stays with its owner) and DIR/NAME.pub
// (the public key: give it to the peers that must recognise NAME) for each NAME. Refuses to
// overwrite an existing key. Allow-lists are public keys, one per line:
//   cat DIR/edge-*.pub > DIR/clients.allow
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <edgesplit/transport/zmq_curve.hpp>

using namespace edgesplit;

int main(int argc, char** argv) {
  std::filesystem::path dir;
  std::vector<std::string> names;
  try {
    for (int i = 1; i < argc; ++i) {
      const std::string a = argv[i];
      if (a == "--out") {
        if (++i >= argc) fail(errc::invalid_argument, "--out needs a directory");
        dir = argv[i];
      } else if (a.rfind("--", 0) == 0) {
        fail(errc::invalid_argument, "unknown option " + a);
      } else {
        if (a.empty() || a.size() > 64 || a.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.") != std::string::npos ||
            a[0] == '.')
          fail(errc::invalid_argument, "a key name is 1..64 of [A-Za-z0-9._-], not starting with '.': '" + a + "'");
        names.push_back(a);
      }
    }
    if (dir.empty() || names.empty()) fail(errc::invalid_argument, "usage: edgesplit_keygen --out DIR NAME [NAME...]");
  } catch (const error& e) {
    std::fprintf(stderr, "edgesplit_keygen: %s\n", e.what());
    return 2;
  }
  try {
    if (!curve_available()) fail(errc::unsupported, "this libzmq was built without CURVE");
    std::filesystem::create_directories(dir);
    for (const auto& n : names) {
      const auto base = dir / n;
      if (std::filesystem::exists(base.string() + ".key") || std::filesystem::exists(base.string() + ".pub"))
        fail(errc::io_error, base.string() + ".key or .pub exists already: not overwriting a key");
      const CurveKeyPair k = generate_curve_keypair();
      write_curve_key_files(k, base);
      std::printf("%s.key  %s.pub  public key %s\n", base.c_str(), base.c_str(), k.public_key.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "edgesplit_keygen: %s\n", e.what());
    return 1;
  }
  return 0;
}
