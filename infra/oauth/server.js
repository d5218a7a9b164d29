// The OAuth2 authorization server for orderflow's local runs and tests: oidc-provider with the
// client-credentials grant only, issuing JWT access tokens for the audience `orderflow`.
//
// DEV ONLY. The clients and secrets below are public, and tokens, like everything else, live in memory.
// Production points OAUTH_ISSUER at a real authorization server (Keycloak, Auth0, ...).
//
//   node server.js                  serve (started by `bash infra/scripts/oauth.sh start`)
//   node server.js --generate-jwks  print a fresh private JWK set, for OAUTH_JWKS_FILE
//
// Environment:
//   OAUTH_HOST            address to bind (default 127.0.0.1)
//   OAUTH_PORT            port (default 9000)
//   OAUTH_SERVER_ISSUER   the issuer URL it announces and puts in `iss` (default http://127.0.0.1:<port>);
//                         must be exactly what the APIs are given as OAUTH_ISSUER
//   OAUTH_JWKS_FILE       a private JWK set ({"keys": [...]}) to sign with; by default fresh keys are generated
//                         at every start. Restarting with another file (or without one) rotates the keys.

import { generateKeyPairSync, randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

// The audience of the Sales and Delivery APIs (their OAUTH_AUDIENCE).
const AUDIENCE = 'orderflow';
// RFC 8707 resource indicators must be absolute URIs, so the APIs are the resource `urn:orderflow`; its tokens
// carry `aud: orderflow`. Clients need not send `resource`: it is the default.
const RESOURCE = 'urn:orderflow';
// Every scope the APIs know. Declaring them makes oidc-provider enforce each client's allow-list (`scope` below):
// a scope it does not know would not be refused, only dropped.
const API_SCOPES = ['orders:read', 'orders:write', 'shipments:read', 'shipments:write', 'admin'];
const TOKEN_TTL_SECONDS = 60 * 60;

// Dev-only clients, the same as `orderflow dev`'s built-in issuer has. The secrets are not secret.
const CLIENTS = [
  { client_id: 'sales-client', client_secret: 'dev-secret-sales', scope: 'orders:read orders:write' },
  { client_id: 'delivery-staff', client_secret: 'dev-secret-delivery', scope: 'shipments:read shipments:write' },
  { client_id: 'analyst', client_secret: 'dev-secret-analyst', scope: 'orders:read shipments:read' },
  { client_id: 'admin', client_secret: 'dev-secret-admin', scope: API_SCOPES.join(' ') },
].map((client) => ({
  ...client,
  grant_types: ['client_credentials'],
  response_types: [],
  redirect_uris: [],
  token_endpoint_auth_method: 'client_secret_basic',
}));

/** A private JWK set with one ES256 key (what access tokens are signed with) and one RS256 key. */
function generateJwks() {
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  // Random kids, so a verifier holding keys from an earlier run notices the change and fetches the JWKS again.
  return {
    keys: [
      { ...ec, kid: `es256-${randomUUID()}`, alg: 'ES256', use: 'sig' },
      { ...rsa, kid: `rs256-${randomUUID()}`, alg: 'RS256', use: 'sig' },
    ],
  };
}

function loadJwks(file) {
  const jwks = JSON.parse(readFileSync(file, 'utf8'));
  if (!Array.isArray(jwks.keys) || !jwks.keys.some((key) => key.kty === 'EC' && key.crv === 'P-256')) {
    throw new Error(`${file} must be a JWK set with a P-256 (ES256) private key`);
  }
  return jwks;
}

/**
 * RFC 6749 §3.3 lets the server pick a default when the client asks for no scope; like `orderflow dev`'s
 * issuer (and Auth0), we grant everything the client may have. oidc-provider would otherwise issue a token
 * with no scope at all. Called while the token request's resource is resolved, before scopes are checked.
 */
function defaultToAllowedScopes(ctx, client) {
  if (ctx.oidc.params.grant_type === 'client_credentials' && !ctx.oidc.params.scope && client?.scope) {
    ctx.oidc.params.scope = client.scope;
  }
}

function main() {
  if (process.argv.includes('--generate-jwks')) {
    process.stdout.write(`${JSON.stringify(generateJwks(), null, 2)}\n`);
    return;
  }

  const host = process.env.OAUTH_HOST || '127.0.0.1';
  const port = Number.parseInt(process.env.OAUTH_PORT || '9000', 10);
  const issuer = process.env.OAUTH_SERVER_ISSUER || `http://127.0.0.1:${port}`;
  const jwks = process.env.OAUTH_JWKS_FILE ? loadJwks(process.env.OAUTH_JWKS_FILE) : generateJwks();

  const provider = new Provider(issuer, {
    clients: CLIENTS,
    jwks,
    scopes: API_SCOPES,
    clientAuthMethods: ['client_secret_basic'],
    // Only the client-credentials grant: no browser flows, so no response types.
    responseTypes: [],
    // Cookies are only used by browser flows, which we do not serve; a random key silences the warning.
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    ttl: { ClientCredentials: TOKEN_TTL_SECONDS },
    features: {
      clientCredentials: { enabled: true },
      // The login and consent pages of the authorization-code flow; nobody logs in here.
      devInteractions: { enabled: false },
      resourceIndicators: {
        enabled: true,
        defaultResource: async () => RESOURCE,
        getResourceServerInfo: async (ctx, resourceIndicator, client) => {
          if (resourceIndicator !== RESOURCE) {
            throw new errors.InvalidTarget(`the only resource is ${RESOURCE}`);
          }
          defaultToAllowedScopes(ctx, client);
          return {
            // Scopes outside the client's allow-list are refused earlier (invalid_scope); this is a backstop.
            scope: client?.scope ?? '',
            audience: AUDIENCE,
            accessTokenTTL: TOKEN_TTL_SECONDS,
            // RFC 9068 JWT access tokens (header `typ: at+jwt`), verifiable with the published JWKS.
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        },
      },
    },
  });

  // Each issued token and each refusal, one line each: enough to debug a failing test from the log.
  provider.on('grant.success', (ctx) => {
    console.log(`token issued to ${ctx.oidc.client?.clientId} scope=${JSON.stringify(ctx.oidc.entities.ClientCredentials?.scope ?? '')}`);
  });
  provider.on('grant.error', (ctx, error) => {
    console.log(`token refused for ${ctx.oidc.client?.clientId ?? 'unknown client'}: ${error.message} (${error.error_description ?? ''})`);
  });

  const server = provider.listen(port, host, () => {
    console.log(`oidc-provider listening on http://${host}:${port}, issuer ${issuer}, audience ${AUDIENCE} (resource ${RESOURCE})`);
  });
  server.on('error', (error) => {
    console.error(`cannot listen on ${host}:${port}: ${error.message}`);
    process.exit(1);
  });
  for (const signal of ['SIGINT', 'SIGTERM']) {
    process.on(signal, () => server.close(() => process.exit(0)));
  }
}

try {
  main();
} catch (error) {
  // A configuration mistake (say, a bad OAUTH_JWKS_FILE) deserves one line, not a stack trace.
  console.error(`oauth server: ${error.message}`);
  process.exit(1);
}
