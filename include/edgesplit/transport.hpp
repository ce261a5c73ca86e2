// edgesplit/transport.hpp - transports: in-process pairs, simulated links, TCP (POSIX sockets),
// and the clocks they run on. TLS and ZeroMQ have headers of their own (optional dependencies).
#pragma once

#include "edgesplit/transport/clock.hpp"
#include "edgesplit/transport/inproc.hpp"
#include "edgesplit/transport/simulated_link.hpp"
#include "edgesplit/transport/tcp.hpp"
#include "edgesplit/transport/transport.hpp"
