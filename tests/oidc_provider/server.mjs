// Test-only OAuth 2.0 / OpenID Connect authorization server for devicelink's
// end-to-end tests, built on the `oidc-provider` package (pinned in
// package.json). It is NOT a production configuration: it serves plain HTTP on
// loopback, keeps everything in memory, and lets anyone "log in" with any name
// through oidc-provider's devInteractions pages.
//
//   node tests/oidc_provider/server.mjs PORT      (PORT 0 = any free port)
//
// When it is listening it prints exactly one line to stdout:
//
//   issuer http://127.0.0.1:PORT
//
// and nothing else to stdout afterwards; oidc-provider's own notices and
// warnings, and any server error, go to stderr. It stops on SIGTERM or SIGINT.
//
// Environment (all optional, test-only):
//   OP_ACCESS_TOKEN_TTL       access-token lifetime in seconds (default 60), so
//                             tests can force refreshes.
//   OP_DEVICE_POLL_INTERVAL   if set, an `interval` member with this many
//                             seconds is added to the device authorization
//                             response. oidc-provider itself returns no
//                             `interval` (clients then default to 5 s, RFC 8628
//                             section 3.2) and never answers `slow_down`, so
//                             this only tells a client how fast it may poll;
//                             it changes nothing on the server.
//   OP_REFRESH_NEEDS_OFFLINE_ACCESS  if "1", the library's default: a refresh
//                             token only for grants with offline_access.
//   OP_EXIT_ON_STDIN_CLOSE    if "1", exit when stdin reaches end of file, so
//                             the server dies with the test process that
//                             spawned it with a stdin pipe even if that process
//                             is killed without cleaning up.
//   OP_RECORD_ISSUED_TO       if set, a file to which one JSON line is appended
//                             per token event: the VALUE of every access
//                             token, refresh token and device code saved or
//                             consumed, of every refresh token destroyed
//                             (revoked, or reused), plus grant.success,
//                             grant.error (with oidc-provider's error_detail,
//                             e.g. "refresh token already used") and
//                             grant.revoked. It holds live secrets: tests use
//                             it to prove none of them leaks into the device's
//                             files or logs, and to see what the device
//                             presented. Never set it elsewhere.
//   OP_CLIENT_JWKS            if set, a JWKS (JSON) of public keys: a second
//                             client, KEY_CLIENT_ID, is registered with
//                             token_endpoint_auth_method private_key_jwt
//                             (RFC 7523 section 2.2) and these keys, ES256
//                             only. oidc-provider checks each assertion's
//                             signature, iss, sub, aud (the issuer, the
//                             token endpoint or the endpoint's URL), exp, and
//                             that its jti was never seen before.
//   OP_CLIENT_SECRET          if set, two confidential clients are registered
//                             with this client_secret: SECRET_CLIENTS below,
//                             one client_secret_basic and one client_secret_post.
//   OP_CLIENT_CREDENTIALS     if "1", the client credentials grant (RFC 6749
//                             section 4.4, features.clientCredentials) for the
//                             confidential clients (the secret ones and the
//                             private_key_jwt one), never the public client. Its
//                             tokens have no user; with a `resource` of
//                             RESOURCE_SERVERS they are JWTs for it (one resource
//                             per token), else opaque (introspection says who).
//                             DEVICE_SCOPES become known scopes (oidc-provider
//                             silently drops unknown ones, and then answers
//                             without `scope`), and the confidential clients may
//                             have only CONFIDENTIAL_SCOPE of them: a request for
//                             `updates.read` is invalid_scope.
//                             The record (OP_RECORD_ISSUED_TO) gets a
//                             client_credentials.saved line for each.
//   OP_REGISTRATION           if "1", dynamic client registration (RFC 7591)
//                             at /reg, open (no initial access token) unless
//                             OP_INITIAL_ACCESS_TOKEN is set, and its
//                             management (RFC 7592: read, update, delete at
//                             /reg/CLIENT_ID with the registration access
//                             token, which every update rotates: the
//                             library's default).
//   OP_FLEET_JWKS             with OP_REGISTRATION: a JWKS (JSON) of the
//                             manufacturer's public keys. A registration (and
//                             an update) must then carry a software_statement
//                             signed by one of them (ES256 or RS256), not
//                             expired, from OP_STATEMENT_ISSUER when that is
//                             set, with a software_id; its claims win over
//                             the metadata sent beside it (RFC 7591 section
//                             3.1.1). Else invalid_software_statement (or
//                             unapproved_software_statement when none came).
//                             oidc-provider has no software statements of its
//                             own: extraClientMetadata's validator (which must
//                             be synchronous, so node:crypto verifies, not
//                             jose) checks them. software_id,
//                             software_version and device_serial are kept as
//                             client metadata.
//   OP_DPOP_NONCE             if "1", DPoP (RFC 9449; oidc-provider's
//                             features.dPoP, on by default, checks every proof
//                             at the token endpoint and at /me and binds the
//                             tokens of a request with one to its key) wants a
//                             server nonce in every proof: nonceSecret is set
//                             and requireNonce is true, so a proof without the
//                             current nonce gets use_dpop_nonce with a
//                             DPoP-Nonce header (at /me: 401 and
//                             WWW-Authenticate: DPoP error="use_dpop_nonce").
//   OP_ROTATE_REFRESH_TOKEN   "always" (default): every refresh rotates the
//                             refresh token. "default": the library's own rule,
//                             which does not rotate a public client's refresh
//                             token that is sender-constrained (DPoP-bound),
//                             as RFC 9700 section 4.14.2 allows.
//
// Beyond the device flow, rotation and revocation, it is set up for what the
// daemon sends on behalf of its apps:
//
//   - Narrowed refresh (RFC 6749 section 6): `scope` on a refresh_token grant
//     may name a subset of the refresh token's scope; the access token gets
//     exactly that subset, anything more is invalid_scope. oidc-provider does
//     this natively; the new refresh token keeps the full scope.
//   - Resource indicators (RFC 8707), see RESOURCE_SERVERS below: `resource`
//     on the device authorization request and on token requests. A token
//     request naming one of the grant's resources gets a signed JWT access
//     token with `aud` = that resource and only that resource's scopes; one
//     naming none gets the usual opaque token for the userinfo endpoint (when
//     the grant has `openid`). A refresh may only name a resource that the
//     device authorization request named; anything else is invalid_target,
//     and (rotation comes first) that refresh has spent its refresh token.
//   - Step-up (RFC 9470): `acr_values` and `max_age` are accepted on the
//     device authorization request, discovery lists ACR_VALUES, and each login
//     gets an `acr` (see loginAcr below) that the ID token carries when
//     acr_values were requested. `auth_time` is in the ID token when max_age
//     was requested, except max_age=0 (the library turns it into
//     prompt=login, which the device flow does not keep).
//   - Token introspection (RFC 7662) at /token/introspection, so tests can ask
//     what an opaque access token was issued for; a public client may only
//     introspect its own tokens.

import { createPublicKey, generateKeyPairSync, randomBytes, verify as verifySignature } from 'node:crypto';
import * as http from 'node:http';
import process from 'node:process';

// oidc-provider prints its "NOTICE" lines with console.info (stdout). stdout is
// reserved for the single `issuer` line, so send every console.log/info to
// stderr before the library is loaded.
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);

const { default: Provider, errors } = await import('oidc-provider');

const CLIENT_ID = 'devicelink-test';
const KEY_CLIENT_ID = 'devicelink-test-key';
// Scopes a client may have for itself (OP_CLIENT_CREDENTIALS), and what the confidential clients may ask.
const DEVICE_SCOPES = ['telemetry.write', 'updates.read'];
const CONFIDENTIAL_SCOPE = 'openid profile offline_access telemetry.write';
// The confidential clients OP_CLIENT_SECRET registers, by token_endpoint_auth_method.
const SECRET_CLIENTS = {
  client_secret_basic: 'devicelink-test-basic',
  client_secret_post: 'devicelink-test-post',
};
const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';

// The resource servers this server issues tokens for (RFC 8707), the same URIs
// as the development server's default `resources`, with the scopes each one
// defines. Their access tokens are RS256 JWTs signed with the key in /jwks.
const RESOURCE_SERVERS = {
  'https://api.example.com': 'api:read api:write',
  'https://media.example.com': 'media:read',
};

// Authentication context classes (RFC 9470, OIDC acr), weakest first; the same
// values as the development server's.
const ACR_VALUES = ['urn:devicelink:acr:pwd', 'urn:devicelink:acr:mfa'];

function usage(message) {
  process.stderr.write(`server.mjs: ${message}\nusage: node server.mjs PORT   (0 = any free port)\n`);
  process.exit(2);
}

function positiveInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  if (!/^\d+$/.test(raw) || Number(raw) < 1) usage(`${name} must be a positive integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

function nonNegativeInt(name) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return undefined;
  if (!/^\d+$/.test(raw)) usage(`${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

const portArg = process.argv[2];
if (portArg === undefined || !/^\d+$/.test(portArg) || Number(portArg) > 65535) {
  usage(`expected a port number, got ${JSON.stringify(portArg)}`);
}
const accessTokenTtl = positiveInt('OP_ACCESS_TOKEN_TTL', 60);
let clientJwks;
if (process.env.OP_CLIENT_JWKS) {
  try {
    clientJwks = JSON.parse(process.env.OP_CLIENT_JWKS);
  } catch {
    usage('OP_CLIENT_JWKS must be a JWKS in JSON');
  }
  if (!Array.isArray(clientJwks?.keys)) usage('OP_CLIENT_JWKS must be a JWKS ({"keys": [...]})');
}
const devicePollInterval = nonNegativeInt('OP_DEVICE_POLL_INTERVAL');
const clientSecret = process.env.OP_CLIENT_SECRET || undefined;
const clientCredentials = process.env.OP_CLIENT_CREDENTIALS === '1';
// What a confidential client may use; the public client never gets client_credentials.
const confidentialGrants = [DEVICE_CODE_GRANT, 'refresh_token', ...(clientCredentials ? ['client_credentials'] : [])];
const confidentialScope = clientCredentials ? { scope: CONFIDENTIAL_SCOPE } : {};
const registration = process.env.OP_REGISTRATION === '1';
let fleetKeys;
if (process.env.OP_FLEET_JWKS) {
  try {
    fleetKeys = JSON.parse(process.env.OP_FLEET_JWKS).keys;
  } catch {
    usage('OP_FLEET_JWKS must be a JWKS in JSON');
  }
  if (!Array.isArray(fleetKeys) || !registration) usage('OP_FLEET_JWKS needs a JWKS and OP_REGISTRATION=1');
  fleetKeys = fleetKeys.map((jwk) => ({ jwk, key: createPublicKey({ key: jwk, format: 'jwk' }) }));
}
const statementIssuer = process.env.OP_STATEMENT_ISSUER || undefined;

// A software statement (RFC 7591 section 2.3), checked synchronously: its claims,
// or an InvalidSoftwareStatement error saying why not.
function statementClaims(statement) {
  const parts = typeof statement === 'string' ? statement.split('.') : [];
  if (parts.length !== 3) throw new errors.InvalidSoftwareStatement('not a compact JWS');
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url'));
  } catch {
    throw new errors.InvalidSoftwareStatement('not a JWT');
  }
  const data = Buffer.from(`${parts[0]}.${parts[1]}`);
  const signature = Buffer.from(parts[2], 'base64url');
  const verified = fleetKeys.some(({ jwk, key }) => {
    if (header.alg === 'ES256' && jwk.kty === 'EC') {
      return verifySignature('sha256', data, { key, dsaEncoding: 'ieee-p1363' }, signature);
    }
    if (header.alg === 'RS256' && jwk.kty === 'RSA') return verifySignature('sha256', data, key, signature);
    return false;
  });
  if (!verified) throw new errors.InvalidSoftwareStatement('the software statement does not verify with the fleet key');
  const now = Date.now() / 1000;
  if (statementIssuer !== undefined && claims.iss !== statementIssuer) {
    throw new errors.InvalidSoftwareStatement(`the software statement is not from ${statementIssuer}`);
  }
  if (typeof claims.exp === 'number' && claims.exp <= now) throw new errors.InvalidSoftwareStatement('the software statement has expired');
  if (typeof claims.software_id !== 'string') throw new errors.InvalidSoftwareStatement('the software statement has no software_id');
  return claims;
}
const rotation = process.env.OP_ROTATE_REFRESH_TOKEN || 'always';
if (!['always', 'default'].includes(rotation)) usage(`OP_ROTATE_REFRESH_TOKEN must be always or default, got ${JSON.stringify(rotation)}`);

// Listen first: the issuer has to carry the real port, and with PORT 0 that is
// only known once the socket is bound. Requests are only handled once the
// provider is attached below, and nobody knows the port before we print it.
const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(Number(portArg), '127.0.0.1', () => {
    server.off('error', reject);
    resolve();
  });
});
const issuer = `http://127.0.0.1:${server.address().port}`;

// Fresh signing key and cookie keys for every run (nothing is persisted).
const signingKey = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey
  .export({ format: 'jwk' });

function displayName(login) {
  return login.length ? login[0].toUpperCase() + login.slice(1) : login;
}

const configuration = {
  clients: [
    {
      client_id: CLIENT_ID,
      client_name: 'devicelink test device',
      token_endpoint_auth_method: 'none',
      grant_types: [DEVICE_CODE_GRANT, 'refresh_token'],
      response_types: [],
      redirect_uris: [],
    },
    ...(clientJwks ? [{
      client_id: KEY_CLIENT_ID,
      client_name: 'devicelink test device with its own key',
      token_endpoint_auth_method: 'private_key_jwt',
      token_endpoint_auth_signing_alg: 'ES256',
      jwks: clientJwks,
      grant_types: confidentialGrants,
      ...confidentialScope,
      response_types: [],
      redirect_uris: [],
    }] : []),
    ...(clientSecret ? Object.entries(SECRET_CLIENTS).map(([method, clientId]) => ({
      client_id: clientId,
      client_name: `devicelink test device with a secret (${method})`,
      client_secret: clientSecret,
      token_endpoint_auth_method: method,
      grant_types: confidentialGrants,
      ...confidentialScope,
      response_types: [],
      redirect_uris: [],
    })) : []),
  ],
  // `profile` is a scope through its claims; `openid` and `offline_access`
  // are listed explicitly.
  scopes: ['openid', 'profile', 'offline_access', ...(clientCredentials ? DEVICE_SCOPES : [])],
  claims: {
    openid: ['sub'],
    profile: ['name'],
  },
  // devInteractions logs in whatever login it is given; the account id is
  // that login.
  async findAccount(ctx, sub) {
    return {
      accountId: sub,
      async claims(use, scope, claims, rejected) {
        return { sub, name: displayName(sub) };
      },
    };
  },
  features: {
    deviceFlow: { enabled: true },
    clientCredentials: { enabled: clientCredentials },
    revocation: { enabled: true },
    // Development-only login and consent pages (any login, any password); the
    // Python helper scripts them. Consent stays a real step: the helper
    // submits the consent form instead of the server skipping it.
    devInteractions: { enabled: true },
    registration: {
      enabled: registration,
      initialAccessToken: process.env.OP_INITIAL_ACCESS_TOKEN || false,
    },
    registrationManagement: { enabled: registration },
    // DPoP is on in the library by default; with OP_DPOP_NONCE every proof needs
    // the server's nonce (RFC 9449 section 8).
    ...(process.env.OP_DPOP_NONCE === '1' ? {
      dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
    } : {}),
    introspection: {
      enabled: true,
      // The library's default policy, spelled out so it does not warn: a
      // public client may introspect only the tokens issued to it.
      async allowedPolicy(ctx, client, token) {
        return !(client.clientAuthMethod === 'none' && token.clientId !== ctx.oidc.client.clientId);
      },
    },
    resourceIndicators: {
      enabled: true,
      // The library's default: no resource asked for, none assumed. A token
      // request that names none for a grant of several resources (and no
      // `openid`) fails with invalid_target: a token has one audience.
      async defaultResource(ctx, client, oneOf) {
        return oneOf;
      },
      // Without `resource` on a token request the token is for the userinfo
      // endpoint (when the grant has `openid`), not for a granted resource:
      // the daemon's default token stays the usual one.
      async useGrantedResource(ctx, model) {
        return false;
      },
      async getResourceServerInfo(ctx, resourceIndicator, client) {
        if (!Object.hasOwn(RESOURCE_SERVERS, resourceIndicator)) throw new errors.InvalidTarget();
        return {
          scope: RESOURCE_SERVERS[resourceIndicator],
          accessTokenTTL: accessTokenTtl,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  acrValues: ACR_VALUES,
  extraClientMetadata: {
    properties: ['software_statement', 'software_id', 'software_version', 'device_serial'],
    // Runs for every property of every client the library instantiates, also when a
    // stored client is loaded for a token request: a statement is only judged when a
    // client registers or updates itself.
    validator(ctx, key, value, metadata) {
      const route = ctx?.oidc?.route;
      if (key !== 'software_statement' || !fleetKeys || (route !== 'registration' && route !== 'client_update')) return;
      if (value === undefined) {
        throw new errors.UnapprovedSoftwareStatement('a software statement signed by the fleet key is required');
      }
      const claims = statementClaims(value);
      for (const [name, claim] of Object.entries(claims)) {
        if (!['iss', 'iat', 'exp', 'jti', 'nbf', 'cnf'].includes(name)) metadata[name] = claim;
      }
    },
  },
  // A refresh token for every grant of a client allowed the refresh_token
  // grant (the default also demands the offline_access scope).
  async issueRefreshToken(ctx, client, code) {
    if (process.env.OP_REFRESH_NEEDS_OFFLINE_ACCESS === '1') {
      return client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access');
    }
    return client.grantTypeAllowed('refresh_token');
  },
  // Rotate on every use: the old refresh token is consumed, and presenting it
  // again (reuse) makes oidc-provider revoke the whole grant. Rotation happens
  // before `resource` is resolved, so a refresh refused with invalid_target has
  // already consumed the token it presented (the scope check comes first, so
  // invalid_scope spends nothing).
  ...(rotation === 'always' ? { rotateRefreshToken: true } : {}),
  ttl: {
    AccessToken: accessTokenTtl,
    // The library's defaults, spelled out so it does not warn about them.
    DeviceCode: 10 * 60,
    IdToken: 60 * 60,
    Interaction: 60 * 60,
    Session: 14 * 24 * 60 * 60,
    Grant: 14 * 24 * 60 * 60,
    RefreshToken: 14 * 24 * 60 * 60,
  },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  jwks: { keys: [{ ...signingKey, use: 'sig', alg: 'RS256', kid: randomBytes(8).toString('hex') }] },
};

const provider = new Provider(issuer, configuration);

// The acr of a login (RFC 9470 step-up). devInteractions' login page sets none,
// so every login gets one here: the `acr` field of the login form if the test
// harness posted one (test-only: "the user did this kind of sign-in"), else
// the first of the request's acr_values that this server supports (the user
// did the stronger sign-in that was asked for), else the weakest.
function loginAcr(posted, requested) {
  if (posted !== undefined) {
    if (!ACR_VALUES.includes(posted)) throw new errors.InvalidRequest('unsupported acr');
    return posted;
  }
  const asked = String(requested ?? '').split(' ').filter((value) => ACR_VALUES.includes(value));
  return asked[0] ?? ACR_VALUES[0];
}

const interactionResult = provider.interactionResult.bind(provider);
provider.interactionResult = async (req, res, result, options) => {
  if (result?.login && result.login.acr === undefined) {
    const { params } = await provider.interactionDetails(req, res);
    result.login.acr = loginAcr(Provider.ctx?.oidc?.body?.acr, params.acr_values);
  }
  return interactionResult(req, res, result, options);
};

if (devicePollInterval !== undefined) {
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.oidc?.route === 'device_authorization' && ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
      ctx.body.interval = devicePollInterval;
    }
  });
}

// Test-only record of what was issued (see OP_RECORD_ISSUED_TO above). Opaque
// tokens' values are their ids (`jti`). appendFileSync: a line is on disk
// before the response that carries the token goes out.
const recordTo = process.env.OP_RECORD_ISSUED_TO;
if (recordTo) {
  const { appendFileSync } = await import('node:fs');
  const record = (entry) => appendFileSync(recordTo, `${JSON.stringify({ t: Date.now(), ...entry })}\n`, { mode: 0o600 });
  for (const event of ['access_token.saved', 'refresh_token.saved', 'refresh_token.consumed',
    'refresh_token.destroyed', 'device_code.saved', 'device_code.consumed', 'client_credentials.saved']) {
    provider.on(event, (token) => record({ event, value: token.jti, grant_id: token.grantId ?? null }));
  }
  provider.on('grant.success', (ctx) => record({ event: 'grant.success', grant_type: ctx.oidc?.params?.grant_type ?? null }));
  provider.on('grant.error', (ctx, err) => record({
    event: 'grant.error',
    grant_type: ctx.oidc?.params?.grant_type ?? null,
    error: err?.error ?? null,
    detail: err?.error_detail ?? null,
  }));
  provider.on('grant.revoked', (ctx, grantId) => record({ event: 'grant.revoked', grant_id: grantId }));
}

// Errors are logged without request bodies or tokens.
provider.on('server_error', (ctx, err) => {
  process.stderr.write(`oidc-provider server_error on ${ctx.method} ${ctx.path}: ${err?.stack ?? err}\n`);
});

server.on('request', provider.callback());

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  server.close(() => process.exit(0));
  server.closeAllConnections();
  // close() waits for nothing once every connection is closed; this is only a
  // backstop if something keeps the loop alive.
  setTimeout(() => process.exit(0), 2000).unref();
  if (signal) process.stderr.write(`server.mjs: stopping on ${signal}\n`);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

if (process.env.OP_EXIT_ON_STDIN_CLOSE === '1') {
  process.stdin.on('end', () => stop('end of stdin'));
  process.stdin.on('error', () => stop('stdin error'));
  process.stdin.resume();
}

process.stdout.write(`issuer ${issuer}\n`);
