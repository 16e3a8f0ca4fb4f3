#include "iscsi/auth.hpp"

#include <algorithm>

namespace ispace::iscsi {

AuthResult NoneAuthenticator::step(const KeyValueList&, KeyValueList&) {
    return AuthResult{AuthStatus::done, {}, {}};
}

std::unique_ptr<Authenticator> make_none_authenticator() {
    return std::make_unique<NoneAuthenticator>();
}

std::string choose_auth_method(const std::vector<std::string_view>& offered,
                               const std::vector<std::string>& acceptable) {
    for (auto method : offered) {
        if (std::find(acceptable.begin(), acceptable.end(), method) != acceptable.end()) {
            return std::string(method);
        }
    }
    return {};
}

} // namespace ispace::iscsi
