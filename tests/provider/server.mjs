// A real OpenID provider (panva/oidc-provider) shaped like AWS Cognito, for the end-to-end tests.
//
// Cognito-like: endpoints /oauth2/authorize, /oauth2/token, /oauth2/userInfo, /oauth2/revoke, /logout,
// /.well-known/jwks.json; ID tokens carry cognito:username, cognito:groups (absent when empty) and
// token_use = "id"; a confidential client with a secret; PKCE S256 required; refresh tokens without
// offline_access; /logout accepts Cognito's client_id + logout_uri.
//
// Configuration by environment: PORT (0 = any), CLIENT_ID, CLIENT_SECRET, REDIRECT_URIS and LOGOUT_URIS
// (comma-separated), ROTATE_REFRESH ("1" rotates refresh tokens), REFRESH_DELAY_MS (slow refresh grants), AUTH_METHOD (client_secret_basic|client_secret_post).
// Prints one JSON line {"issuer": "..."} on stdout when ready.
//
// Test controls (not part of any real provider): POST /test/users/{name}/disable and /enable,
// GET /test/refreshes (count of refresh-token redemptions).
import net from 'node:net';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT ?? 0);
const clientId = process.env.CLIENT_ID ?? 'bbsso-client';
const clientSecret = process.env.CLIENT_SECRET ?? 'bbsso-client-secret';
const redirectUris = (process.env.REDIRECT_URIS ?? 'http://localhost:8080/sso/callback').split(',');
const logoutUris = (process.env.LOGOUT_URIS ?? 'http://localhost:8080/sso/logged-out').split(',');

const users = {
  alice: { password: 'alice-password', sub: '7d3f1c2a-0001-4000-8000-000000000001', email: 'alice@example.com', name: 'Alice Example', groups: ['dev'] },
  bob: { password: 'bob-password', sub: '7d3f1c2a-0002-4000-8000-000000000002', email: 'bob@example.com', name: 'Bob Builder', groups: ['dev', 'admins'] },
  carol: { password: 'carol-password', sub: '7d3f1c2a-0003-4000-8000-000000000003', email: 'Carol@Partner.Example', name: 'Carol Partner', groups: [] },
};
const bySub = Object.fromEntries(Object.entries(users).map(([username, u]) => [u.sub, { username, ...u }]));
const disabled = new Set();
let refreshes = 0;

const configuration = {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    post_logout_redirect_uris: logoutUris,
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: process.env.AUTH_METHOD ?? 'client_secret_basic',
  }],
  routes: {
    authorization: '/oauth2/authorize',
    token: '/oauth2/token',
    userinfo: '/oauth2/userInfo',
    jwks: '/.well-known/jwks.json',
    end_session: '/logout',
    revocation: '/oauth2/revoke',
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    revocation: { enabled: true },
    rpInitiatedLogout: {
      enabled: true,
      logoutSource: async (ctx, form) => {
        ctx.body = `<!doctype html><html><body><h1>Sign out?</h1>${form}<button type="submit" form="op.logoutForm" name="logout" value="yes">Yes</button></body></html>`;
      },
    },
  },
  scopes: ['openid', 'email', 'profile', 'offline_access'],
  claims: {
    openid: ['sub', 'cognito:username', 'cognito:groups', 'token_use'],
    email: ['email', 'email_verified'],
    profile: ['name', 'given_name', 'family_name', 'custom:department'],
  },
  conformIdTokenClaims: false,
  issueRefreshToken: async () => true,
  rotateRefreshToken: () => process.env.ROTATE_REFRESH === '1',
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 30 * 86400, Interaction: 600, Session: 3600, Grant: 30 * 86400 },
  async findAccount(ctx, sub) {
    const user = bySub[sub];
    if (!user || disabled.has(user.username)) return undefined;
    if (ctx.oidc?.params?.grant_type === 'refresh_token') {
      refreshes += 1;
      // A slow provider, so that concurrent refreshes overlap (REFRESH_DELAY_MS, tests only).
      const delay = Number(process.env.REFRESH_DELAY_MS || 0);
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay));
    }
    return {
      accountId: sub,
      async claims(use) {
        const claims = {
          sub,
          'cognito:username': user.username,
          email: user.email,
          // Cognito's userInfo answers the string "true"; its ID token a boolean.
          email_verified: use === 'userinfo' ? 'true' : true,
          name: user.name,
          given_name: user.name.split(' ')[0],
          family_name: user.name.split(' ').slice(1).join(' '),
        };
        if (user.groups.length) claims['cognito:groups'] = user.groups;
        if (use === 'id_token') claims.token_use = 'id';
        // Only userinfo knows the department, so a test can see that userinfo claims are merged.
        if (use === 'userinfo') claims['custom:department'] = 'Engineering';
        return claims;
      },
    };
  },
  renderError: async (ctx, out) => {
    ctx.type = 'html';
    ctx.body = `<!doctype html><html><body><h1>Provider error</h1><pre>${String(out.error)}: ${String(out.error_description ?? '')}</pre></body></html>`;
  },
};

async function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.on('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port: p } = probe.address();
      probe.close(() => resolve(p));
    });
  });
}
const actualPort = port || await freePort();
const issuer = `http://127.0.0.1:${actualPort}`;
const provider = new Provider(issuer, configuration);

async function formBody(req) {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  return Object.fromEntries(new URLSearchParams(raw));
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

provider.use(async (ctx, next) => {
  // Cognito's logout takes logout_uri; oidc-provider knows post_logout_redirect_uri.
  if (ctx.path === '/logout' && ctx.method === 'GET' && ctx.query.logout_uri) {
    const q = new URLSearchParams(ctx.querystring);
    q.set('post_logout_redirect_uri', q.get('logout_uri'));
    q.delete('logout_uri');
    ctx.querystring = q.toString();
  }
  const test = ctx.path.match(/^\/test\/users\/([^/]+)\/(disable|enable)$/);
  if (test && ctx.method === 'POST') {
    if (test[2] === 'disable') disabled.add(test[1]); else disabled.delete(test[1]);
    ctx.body = { ok: true };
    return;
  }
  if (ctx.path === '/test/refreshes') {
    ctx.body = { refreshes };
    return;
  }
  const interaction = ctx.path.match(/^\/interaction\/([^/]+)(\/login)?$/);
  if (interaction) {
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (ctx.method === 'GET') {
      ctx.type = 'html';
      ctx.body = `<!doctype html><html><body><h1>Sign in</h1>
<form method="post" action="/interaction/${escape(details.uid)}/login">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Sign in</button></form></body></html>`;
      return;
    }
    const form = await formBody(ctx.req);
    const user = users[form.username];
    if (!user || user.password !== form.password || disabled.has(form.username)) {
      ctx.status = 401;
      ctx.type = 'html';
      ctx.body = '<!doctype html><html><body><h1>Wrong username or password</h1></body></html>';
      return;
    }
    const grant = new provider.Grant({ accountId: user.sub, clientId: details.params.client_id });
    grant.addOIDCScope(details.params.scope);
    const grantId = await grant.save();
    await provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: user.sub }, consent: { grantId } }, { mergeWithLastSubmission: false });
    return;
  }
  await next();
});

provider.listen(actualPort, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
