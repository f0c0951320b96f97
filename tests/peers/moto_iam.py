"""moto_server with IAM enforcement (INITIAL_NO_AUTH_ACTION_COUNT), as on AWS.

moto checks a signature on every call once enforcement is on, and answers a 500 to the unsigned
AssumeRoleWithWebIdentity, which AWS serves without one (the web-identity token is the proof).
This launcher lets that one call through unsigned; everything else, including Kinesis calls made
with the credentials it returns, is authenticated and authorised by moto's own IAM policy
evaluation. Arguments are moto_server's.
"""

from moto.core.authorization import ActionAuthenticatorMixin
from moto.server import main

UNSIGNED_ON_AWS = {"AssumeRoleWithWebIdentity"}
_enforce = ActionAuthenticatorMixin._authenticate_and_authorize_action


def _authenticate_unless_unsigned(self, iam_request_cls, resource="*"):
    if self._get_action() in UNSIGNED_ON_AWS:
        return None
    return _enforce(self, iam_request_cls, resource)


ActionAuthenticatorMixin._authenticate_and_authorize_action = _authenticate_unless_unsigned

if __name__ == "__main__":
    main()
