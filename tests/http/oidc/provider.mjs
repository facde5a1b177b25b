// A real authorization server for chatdock's OAuth tests: node-oidc-provider on 127.0.0.1, issuing JWT access
// tokens for the resource the client names (RFC 8707), with the organization in the `org_id` claim.
//
//   PORT=9000 node provider.mjs        prints "listening <issuer>" once it serves
//
// Each start makes a new signing key (a restart is a key rotation). Clients:
// - dynamic registration (the MCP SDK's OAuth client registers itself), authorization code with PKCE; the
//   login form takes any name, and `name@org` gives the token `org_id: org` (`name` alone gives none);
// - pre-registered client-credentials clients, named `<org>-<reader|writer|short|noorg|scplist|scpstring>`
//   (secret `secret`): a reader gets chatdock:read, a writer both scopes, `short` tokens live one second,
//   `noorg` has no org_id; `scplist` and `scpstring` tokens carry their scopes in `scp` instead of `scope`, as
//   Okta writes them (a list, both scopes) and as Microsoft Entra ID does (a string, chatdock:read).
import { generateKeyPair, exportJWK } from 'jose';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const ORGS = ['acme', 'globex'];
const KINDS = {
  reader: 'chatdock:read',
  writer: 'chatdock:read chatdock:write',
  short: 'chatdock:read chatdock:write',
  noorg: 'chatdock:read chatdock:write',
  scplist: 'chatdock:read chatdock:write',
  scpstring: 'chatdock:read',
};

const { privateKey } = await generateKeyPair('RS256', { extractable: true });
const key = { ...(await exportJWK(privateKey)), kid: `key-${Date.now()}`, alg: 'RS256', use: 'sig' };

const clients = [];
for (const org of ORGS) {
  for (const [kind, scope] of Object.entries(KINDS)) {
    clients.push({
      client_id: `${org}-${kind}`,
      client_secret: 'secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      scope,
    });
  }
}

function orgOf(clientId, accountId) {
  if (accountId) return accountId.includes('@') ? accountId.split('@')[1] : undefined;
  const [org, kind] = (clientId || '').split('-');
  return ORGS.includes(org) && kind !== 'noorg' ? org : undefined;
}

const provider = new Provider(issuer, {
  clients,
  jwks: { keys: [key] },
  scopes: ['openid', 'offline_access', 'chatdock:read', 'chatdock:write'],
  pkce: { required: () => true },
  findAccount: (ctx, id) => ({ accountId: id, claims: () => ({ sub: id }) }),
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource, client) => {
        if (!/^https?:\/\//.test(resource)) throw new errors.InvalidTarget();
        return {
          scope: client.scope || 'chatdock:read chatdock:write',
          audience: resource,
          accessTokenTTL: client.clientId.endsWith('-short') ? 1 : 600,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  formats: {
    customizers: {
      jwt: (ctx, token, jwt) => {
        const scope = jwt.payload.scope || '';
        if (token.clientId?.endsWith('-scplist')) jwt.payload.scp = scope.split(' ');
        else if (token.clientId?.endsWith('-scpstring')) jwt.payload.scp = scope;
        else return;
        delete jwt.payload.scope;
      },
    },
  },
  extraTokenClaims: (ctx, token) => {
    const org = orgOf(token.clientId, token.accountId);
    return org ? { org_id: org } : {};
  },
});
provider.proxy = false;
provider.listen(port, '127.0.0.1', () => console.log(`listening ${issuer}`));
