"""cgan-conv with the issue-12 options (g_norm, d_norm, minibatch_std, progressive) written
plainly in PyTorch with the same attribute names, so the tests can check that our state
dicts load one-to-one and that both compute the same function."""


def minibatch_std_torch(torch, x, group_size=4, eps=1e-8):
    """ProGAN's layer; the group is the largest divisor of N not above group_size."""
    n, c, h, w = x.shape
    g = next(d for d in range(min(group_size, n), 0, -1) if n % d == 0)
    y = x.reshape(g, -1, c, h, w)
    y = ((y - y.mean(dim=0)).square().mean(dim=0) + eps).sqrt().mean(dim=[1, 2, 3])
    return torch.cat([x, y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)], dim=1)


def build_torch_conv(torch, num_classes, latent_dim=100, width=8, g_norm="none", d_norm="none",
                     minibatch_std=False, progressive=False):
    nn = torch.nn
    F = torch.nn.functional
    w = width

    class MinibatchStd(nn.Module):
        def forward(self, x):
            return minibatch_std_torch(torch, x)

    def norm(c):
        return {"batch": lambda: nn.BatchNorm2d(c), "instance": lambda: nn.InstanceNorm2d(c, affine=True)}[g_norm]()

    def up(cin):
        layers = [nn.ConvTranspose2d(cin, w, 4, 2, 1), nn.LeakyReLU(0.2)]
        if g_norm != "none":
            layers.insert(1, norm(w))
        return layers

    def sn(m):
        return nn.utils.spectral_norm(m) if d_norm == "spectral" else m

    def d_head():
        extra = [MinibatchStd()] if minibatch_std else []
        return [sn(nn.Conv2d(w, w, 3, 2, 1)), nn.LeakyReLU(0.2), *extra, nn.Flatten(), nn.Dropout(0.4),
                sn(nn.Linear((w + (1 if minibatch_std else 0)) * 49, 1))]

    def growth(module):
        module.register_buffer("growth_phase", torch.tensor(14, dtype=torch.int64))
        module.register_buffer("growth_alpha", torch.tensor(1.0))

    def alpha_of(module):
        phase, alpha = int(module.growth_phase), float(module.growth_alpha)
        return 0.0 if phase == 14 else alpha

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(latent_dim, w * 49)
            self.label_emb = nn.Embedding(num_classes, 50)
            self.label_fc = nn.Linear(50, 49)
            if progressive:
                self.block14 = nn.Sequential(*up(w + 1))
                self.to_img14 = nn.Sequential(nn.Conv2d(w, 1, 3, padding=1), nn.Tanh())
                self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
                self.block28 = nn.Sequential(*up(w))
                self.to_img28 = nn.Sequential(nn.Conv2d(w, 1, 7, padding=3), nn.Tanh())
                growth(self)
            else:
                self.net = nn.Sequential(*up(w + 1), *up(w), nn.Conv2d(w, 1, 7, padding=3), nn.Tanh())

        def forward(self, z, labels):
            h = F.leaky_relu(self.fc(z), 0.2).view(-1, w, 7, 7)
            lab = self.label_fc(self.label_emb(labels)).view(-1, 1, 7, 7)
            h = torch.cat([h, lab], 1)
            if not progressive:
                return self.net(h)
            h14 = self.block14(h)
            a = alpha_of(self)
            if a == 0.0:
                return self.upsample(self.to_img14(h14))
            large = self.to_img28(self.block28(h14))
            return large if a == 1.0 else (1 - a) * self.upsample(self.to_img14(h14)) + a * large

    class D(nn.Module):
        def __init__(self):
            super().__init__()
            self.label_emb = nn.Embedding(num_classes, 50)
            self.label_fc = nn.Linear(50, 784)
            if progressive:
                self.from_img14 = nn.Sequential(sn(nn.Conv2d(2, w, 3, 1, 1)), nn.LeakyReLU(0.2))
                self.from_img28 = nn.Sequential(sn(nn.Conv2d(2, w, 3, 2, 1)), nn.LeakyReLU(0.2))
                self.net = nn.Sequential(*d_head())
                growth(self)
            else:
                self.net = nn.Sequential(sn(nn.Conv2d(2, w, 3, 2, 1)), nn.LeakyReLU(0.2), *d_head())

        def forward(self, x, labels):
            inp = torch.cat([x, self.label_fc(self.label_emb(labels)).view(-1, 1, 28, 28)], 1)
            if not progressive:
                return self.net(inp)
            a = alpha_of(self)
            if a == 0.0:
                h = self.from_img14(F.avg_pool2d(inp, 2))
            elif a == 1.0:
                h = self.from_img28(inp)
            else:
                h = (1 - a) * self.from_img14(F.avg_pool2d(inp, 2)) + a * self.from_img28(inp)
            return self.net(h)

    return G(), D()
