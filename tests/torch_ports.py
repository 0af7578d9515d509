"""The four models written plainly in PyTorch, with the same attribute names, so the
tests can check that our state dicts load one-to-one (and the benchmarks can compare).
A layer directly before a BatchNorm has no bias, as in cganraw.models (the norm cancels it)."""


def build_torch(torch, name, num_classes, latent_dim=100, width=128, batchnorm=False):
    nn = torch.nn
    F = torch.nn.functional
    w = width

    class ConvG(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(latent_dim, w * 49)
            self.label_emb = nn.Embedding(num_classes, 50)
            self.label_fc = nn.Linear(50, 49)
            up1 = [nn.ConvTranspose2d(w + 1, w, 4, 2, 1, bias=not batchnorm), nn.LeakyReLU(0.2)]
            up2 = [nn.ConvTranspose2d(w, w, 4, 2, 1, bias=not batchnorm), nn.LeakyReLU(0.2)]
            if batchnorm:
                up1.insert(1, nn.BatchNorm2d(w))
                up2.insert(1, nn.BatchNorm2d(w))
            self.net = nn.Sequential(*up1, *up2, nn.Conv2d(w, 1, 7, padding=3), nn.Tanh())

        def forward(self, z, labels):
            h = F.leaky_relu(self.fc(z), 0.2).view(-1, w, 7, 7)
            lab = self.label_fc(self.label_emb(labels)).view(-1, 1, 7, 7)
            return self.net(torch.cat([h, lab], 1))

    class ConvD(nn.Module):
        def __init__(self):
            super().__init__()
            self.label_emb = nn.Embedding(num_classes, 50)
            self.label_fc = nn.Linear(50, 784)
            self.net = nn.Sequential(nn.Conv2d(2, w, 3, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(w, w, 3, 2, 1),
                                     nn.LeakyReLU(0.2), nn.Flatten(), nn.Dropout(0.4), nn.Linear(w * 49, 1))

        def forward(self, x, labels):
            lab = self.label_fc(self.label_emb(labels)).view(-1, 1, 28, 28)
            return self.net(torch.cat([x, lab], 1))

    def g_block(i, o, bn):
        return [nn.Linear(i, o, bias=not bn)] + ([nn.BatchNorm1d(o), nn.ReLU()] if bn else [nn.LeakyReLU(0.2)])

    def d_block(i, o):
        return [nn.Linear(i, o), nn.LeakyReLU(0.2), nn.Dropout(0.3)]

    class MLPG(nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k
            bn = k > 0
            self.net = nn.Sequential(*g_block(latent_dim + k, 256, bn), *g_block(256, 512, bn),
                                     *g_block(512, 1024, bn), nn.Linear(1024, 784), nn.Tanh(), nn.Unflatten(1, (1, 28, 28)))

        def forward(self, z, labels=None):
            if self.k:
                z = torch.cat([z, F.one_hot(labels, self.k).to(z.dtype)], 1)
            return self.net(z)

    class MLPD(nn.Module):
        def __init__(self, k):
            super().__init__()
            self.k = k
            self.net = nn.Sequential(*d_block(784 + k, 1024), *d_block(1024, 512), *d_block(512, 256), nn.Linear(256, 1))

        def forward(self, x, labels=None):
            h = x.flatten(1)
            if self.k:
                h = torch.cat([h, F.one_hot(labels, self.k).to(h.dtype)], 1)
            return self.net(h)

    class DCG(nn.Module):
        def __init__(self):
            super().__init__()
            h = max(w // 2, 1)
            self.net = nn.Sequential(nn.Linear(latent_dim, w * 49), nn.Unflatten(1, (w, 7, 7)), nn.BatchNorm2d(w),
                                     nn.ReLU(), nn.ConvTranspose2d(w, h, 4, 2, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU(),
                                     nn.ConvTranspose2d(h, 1, 4, 2, 1), nn.Tanh())

        def forward(self, z, labels=None):
            return self.net(z)

    class DCD(nn.Module):
        def __init__(self):
            super().__init__()
            h = max(w // 2, 1)
            self.net = nn.Sequential(nn.Conv2d(1, h, 4, 2, 1), nn.LeakyReLU(0.2), nn.Conv2d(h, w, 4, 2, 1, bias=False),
                                     nn.BatchNorm2d(w), nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(w * 49, 1))

        def forward(self, x, labels=None):
            return self.net(x)

    if name == "cgan-conv":
        return ConvG(), ConvD()
    if name == "cgan-mlp":
        return MLPG(num_classes), MLPD(num_classes)
    if name == "dcgan":
        return DCG(), DCD()
    if name == "gan-mlp":
        return MLPG(0), MLPD(0)
    raise ValueError(name)
