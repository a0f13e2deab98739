# Placeholder policy so the OPA server has something to serve; a later issue replaces it with the
# real tool-call authorization policy. Fails closed: everything but the health probe is denied.
package agentcluster.authz

default allow := false

allow if input.action == "health"
