"""devicelink simulator: a development authorization server and friends.

`devicelink_sim.authserver.DevServer` is an RFC 8628 authorization server built
on Authlib that runs on 127.0.0.1, for tests, demos and CI. Nothing in this
package is meant for production use.
"""
