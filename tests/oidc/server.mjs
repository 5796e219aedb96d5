// A real OAuth 2.0 authorization server (oidc-provider) on loopback, for mcp-guard's tests.
//   PORT=... JWT_RESOURCE=... OPAQUE_RESOURCE=... node server.mjs
// Client "agent" gets tokens by client_credentials with RFC 8707 resource indicators: JWT access
// tokens (RFC 9068, ES256) for JWT_RESOURCE, opaque ones for OPAQUE_RESOURCE. Client
// "mcp-server" may introspect them (RFC 7662). The signing key is fresh on every start.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const jwtResource = process.env.JWT_RESOURCE;
const opaqueResource = process.env.OPAQUE_RESOURCE;
const scope = 'notes:read notes:write';

const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'es256-test', alg: 'ES256', use: 'sig' };

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'agent',
      client_secret: 'agent-secret',
      grant_types: ['client_credentials'],
      id_token_signed_response_alg: 'ES256',
      redirect_uris: [],
      response_types: [],
      scope,
    },
    {
      client_id: 'mcp-server',
      client_secret: 'server-secret',
      grant_types: [],
      redirect_uris: [],
      response_types: [],
      id_token_signed_response_alg: 'ES256',
    },
  ],
  jwks: { keys: [signingKey] },
  scopes: scope.split(' '),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => jwtResource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== jwtResource && resourceIndicator !== opaqueResource) {
          throw new Error(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope,
          audience: resourceIndicator,
          accessTokenTTL: 600,
          accessTokenFormat: resourceIndicator === opaqueResource ? 'opaque' : 'jwt',
          jwt: { sign: { alg: 'ES256' } },
        };
      },
    },
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
