// The hospital's identity provider for the tests: oidc-provider (an OpenID Certified
// implementation) with the test's own signing key, clients and users.
//
//   node tests/idp/server.mjs CONFIG.json
//
// CONFIG: {"port": 0, "issuer_host": "127.0.0.1", "jwks": {"keys": [private JWK]},
//          "clients": [{"client_id": "...", "redirect_uris": ["http://127.0.0.1/callback"]}],
//          "accounts": {"<login>": {"name": "...", "groups": ["..."], "disabled": false}}}
//
// Prints one line, "ready ISSUER", once it listens. The login page is oidc-provider's own
// development interaction (a form with login and password; any password is accepted): a
// disabled account is one findAccount does not find, as a directory does for a blocked user.
// Accounts are read from CONFIG at each sign-in, so a test can change a user's groups (or
// disable them) between two sign-ins as IT changes the directory behind the IdP.
import fs from "node:fs";
import http from "node:http";
import Provider from "oidc-provider";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const server = http.createServer();
await new Promise((resolve) => server.listen(config.port || 0, "127.0.0.1", resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    redirect_uris: c.redirect_uris,
    application_type: "native", // RFC 8252: loopback redirects on any port
    token_endpoint_auth_method: "none", // a public client, with PKCE (RFC 7636)
    grant_types: ["authorization_code"],
    response_types: ["code"],
  })),
  jwks: config.jwks,
  pkce: { required: () => true },
  claims: { openid: ["sub"], profile: ["name", "preferred_username"], groups: ["groups"] },
  conformIdTokenClaims: false, // profile claims in the ID token itself
  features: { devInteractions: { enabled: true } },
  ttl: { IdToken: 600, AccessToken: 600, AuthorizationCode: 120 },
  async findAccount(ctx, id) {
    const account = JSON.parse(fs.readFileSync(process.argv[2], "utf8")).accounts[id];
    if (!account || account.disabled) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: account.name, groups: account.groups };
      },
    };
  },
});
provider.proxy = false;
server.on("request", provider.callback());
console.log(`ready ${issuer}`);
