// A C++ server: the accept is in a member function of a class in a namespace; the report
// must name it demangled, ns::Server::accept_one().
#include "common.h"

#include <vector>

namespace ns {

class Server {
public:
    explicit Server(int lfd) : lfd_(lfd) {}
    __attribute__((noinline)) int accept_one();
    const std::vector<int> &held() const { return held_; }

private:
    int lfd_;
    std::vector<int> held_;
};

int Server::accept_one()
{
    int fd = ::accept(lfd_, nullptr, nullptr); // @accept_one
    if (fd >= 0) {
        held_.push_back(fd);
        cw_drain(fd);
    }
    return fd;
}

} // namespace ns

int main()
{
    ns::Server server(cw_listen());
    int fd = server.accept_one(); // @main_call
    cw_say("HELD", fd);
    cw_say("READY", static_cast<int>(server.held().size()));
    cw_serve_stdin();
    return 0;
}
