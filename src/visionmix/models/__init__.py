"""Model families. Importing this package registers every family in timm's and visionmix's registries."""
from . import classic  # noqa: F401  (timm / torchvision pass-throughs)
from . import dilated_resnet  # noqa: F401  (dilation='hdc' for timm ResNets)
from . import hire_mlp  # noqa: F401
from . import swin_mlp  # noqa: F401
from . import spach  # noqa: F401
from . import mobile_former  # noqa: F401
from . import unext  # noqa: F401
from . import detection  # noqa: F401  (maskrcnn:BACKBONE composites)
from . import presets  # noqa: F401  (named small models of the default study; after the families)
from . import decoders  # noqa: F401  (unet: / fpn: / deeplabv3plus: / upernet: composites)
from . import refiner  # noqa: F401  (bpr:BACKBONE refiner composites)
